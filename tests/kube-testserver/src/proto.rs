//! Decoding of the Kubernetes protobuf request bodies kubectl sends for core types (its typed
//! clients write `application/vnd.kubernetes.protobuf`): the `k8s\0` envelope, then the object by
//! a small field table. Only the kinds kubectl's imperative commands and drain send are known
//! (ConfigMap, Namespace, DeleteOptions, Eviction, PodDisruptionBudget, Deployment); others get 415. Responses are always JSON,
//! which kubectl accepts.

use crate::util;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Time,
    MapStr,
    MapBytes,
    RepStr,
    /// `intstr.IntOrString`: type 1 (0 int, 1 string), intVal 2, strVal 3.
    IntOrStr,
    Msg(&'static [(u64, &'static str, F)]),
    RepMsg(&'static [(u64, &'static str, F)]),
}

type Schema = &'static [(u64, &'static str, F)];

const OWNER_REF: Schema = &[
    (1, "kind", F::Str),
    (3, "name", F::Str),
    (4, "uid", F::Str),
    (5, "apiVersion", F::Str),
    (6, "controller", F::Bool),
    (7, "blockOwnerDeletion", F::Bool),
];

const OBJECT_META: Schema = &[
    (1, "name", F::Str),
    (2, "generateName", F::Str),
    (3, "namespace", F::Str),
    (5, "uid", F::Str),
    (6, "resourceVersion", F::Str),
    (7, "generation", F::Int),
    (8, "creationTimestamp", F::Time),
    (9, "deletionTimestamp", F::Time),
    (10, "deletionGracePeriodSeconds", F::Int),
    (11, "labels", F::MapStr),
    (12, "annotations", F::MapStr),
    (13, "ownerReferences", F::RepMsg(OWNER_REF)),
    (14, "finalizers", F::RepStr),
];

const CONFIG_MAP: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "data", F::MapStr),
    (3, "binaryData", F::MapBytes),
    (4, "immutable", F::Bool),
];

const NAMESPACE: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(&[(1, "finalizers", F::RepStr)])),
    (3, "status", F::Msg(&[(1, "phase", F::Str)])),
];

const PRECONDITIONS: Schema = &[(1, "uid", F::Str), (2, "resourceVersion", F::Str)];

const DELETE_OPTIONS: Schema = &[
    (1, "gracePeriodSeconds", F::Int),
    (2, "preconditions", F::Msg(PRECONDITIONS)),
    (3, "orphanDependents", F::Bool),
    (4, "propagationPolicy", F::Str),
    (5, "dryRun", F::RepStr),
];

const EVICTION: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "deleteOptions", F::Msg(DELETE_OPTIONS)),
];

const LABEL_SELECTOR: Schema = &[
    (1, "matchLabels", F::MapStr),
    (
        2,
        "matchExpressions",
        F::RepMsg(&[
            (1, "key", F::Str),
            (2, "operator", F::Str),
            (3, "values", F::RepStr),
        ]),
    ),
];

const PDB: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (
        2,
        "spec",
        F::Msg(&[
            (1, "minAvailable", F::IntOrStr),
            (2, "selector", F::Msg(LABEL_SELECTOR)),
            (3, "maxUnavailable", F::IntOrStr),
            (4, "unhealthyPodEvictionPolicy", F::Str),
        ]),
    ),
];

const CONTAINER: Schema = &[
    (1, "name", F::Str),
    (2, "image", F::Str),
    (3, "command", F::RepStr),
    (4, "args", F::RepStr),
    (5, "workingDir", F::Str),
    (
        6,
        "ports",
        F::RepMsg(&[
            (1, "name", F::Str),
            (2, "hostPort", F::Int),
            (3, "containerPort", F::Int),
            (4, "protocol", F::Str),
        ]),
    ),
    (
        7,
        "env",
        F::RepMsg(&[(1, "name", F::Str), (2, "value", F::Str)]),
    ),
    (14, "imagePullPolicy", F::Str),
];

const POD_SPEC: Schema = &[
    (2, "containers", F::RepMsg(CONTAINER)),
    (3, "restartPolicy", F::Str),
    (4, "terminationGracePeriodSeconds", F::Int),
    (6, "dnsPolicy", F::Str),
    (7, "nodeSelector", F::MapStr),
    (10, "nodeName", F::Str),
    (19, "schedulerName", F::Str),
    (20, "initContainers", F::RepMsg(CONTAINER)),
];

const POD_TEMPLATE: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (2, "spec", F::Msg(POD_SPEC)),
];

const DEPLOYMENT: Schema = &[
    (1, "metadata", F::Msg(OBJECT_META)),
    (
        2,
        "spec",
        F::Msg(&[
            (1, "replicas", F::Int),
            (2, "selector", F::Msg(LABEL_SELECTOR)),
            (3, "template", F::Msg(POD_TEMPLATE)),
            (4, "strategy", F::Msg(&[(1, "type", F::Str)])),
            (5, "minReadySeconds", F::Int),
            (6, "revisionHistoryLimit", F::Int),
            (7, "paused", F::Bool),
            (9, "progressDeadlineSeconds", F::Int),
        ]),
    ),
];

const TYPE_META: Schema = &[(1, "apiVersion", F::Str), (2, "kind", F::Str)];

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i).ok_or("truncated varint")?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        let end = self
            .i
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("truncated field")?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }

    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => {
                self.i += 8;
                Ok(())
            }
            2 => self.bytes().map(|_| ()),
            5 => {
                self.i += 4;
                Ok(())
            }
            w => Err(format!("unsupported wire type {w}")),
        }
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

fn base64(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn map_entry(b: &[u8]) -> Result<(String, Vec<u8>), String> {
    let mut r = Reader { b, i: 0 };
    let (mut k, mut v) = (String::new(), Vec::new());
    while r.i < b.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = text(r.bytes()?)?,
            (2, 2) => v = r.bytes()?.to_vec(),
            (_, w) => r.skip(w)?,
        }
    }
    Ok((k, v))
}

fn decode(b: &[u8], schema: Schema) -> Result<Value, String> {
    let mut out = Map::new();
    let mut r = Reader { b, i: 0 };
    while r.i < b.len() {
        let tag = r.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let Some((_, name, f)) = schema.iter().find(|(n, _, _)| *n == num) else {
            r.skip(wire)?;
            continue;
        };
        let name = name.to_string();
        match f {
            F::Int => {
                let v = r.varint()? as i64;
                // Go writes non-pointer zero values; JSON would omit them.
                if v != 0 || name != "generation" {
                    out.insert(name, json!(v));
                }
            }
            F::Bool => {
                out.insert(name, json!(r.varint()? != 0));
            }
            F::Str => {
                let v = text(r.bytes()?)?;
                if !v.is_empty() {
                    out.insert(name, json!(v));
                }
            }
            F::Time => {
                let t = decode(r.bytes()?, &[(1, "s", F::Int)])?;
                let secs = t.get("s").and_then(Value::as_i64).unwrap_or(0);
                if secs != 0 {
                    out.insert(name, json!(util::rfc3339(secs as f64)));
                }
            }
            F::MapStr | F::MapBytes => {
                let (k, v) = map_entry(r.bytes()?)?;
                let v = match f {
                    F::MapStr => json!(text(&v)?),
                    _ => json!(base64(&v)),
                };
                out.entry(name)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("map")
                    .insert(k, v);
            }
            F::RepStr => {
                let s = text(r.bytes()?)?;
                out.entry(name)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(json!(s));
            }
            F::Msg(s) => {
                out.insert(name, decode(r.bytes()?, s)?);
            }
            F::IntOrStr => {
                let v = decode(
                    r.bytes()?,
                    &[
                        (1, "type", F::Int),
                        (2, "intVal", F::Int),
                        (3, "strVal", F::Str),
                    ],
                )?;
                let value = if v.get("type").and_then(Value::as_i64) == Some(1) {
                    v.get("strVal").cloned().unwrap_or(json!(""))
                } else {
                    v.get("intVal").cloned().unwrap_or(json!(0))
                };
                out.insert(name, value);
            }
            F::RepMsg(s) => {
                let v = decode(r.bytes()?, s)?;
                out.entry(name)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(v);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-enveloped protobuf body into the JSON form of the object.
pub fn decode_body(body: &[u8]) -> Result<Value, String> {
    let inner = body
        .strip_prefix(b"k8s\x00")
        .ok_or("protobuf body without the k8s envelope")?;
    let mut r = Reader { b: inner, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while r.i < inner.len() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => {
                let tm = decode(r.bytes()?, TYPE_META)?;
                api_version = util::str_at(&tm, "apiVersion").to_string();
                kind = util::str_at(&tm, "kind").to_string();
            }
            (2, 2) => raw = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    let schema = match kind.as_str() {
        "ConfigMap" => CONFIG_MAP,
        "Namespace" => NAMESPACE,
        "DeleteOptions" => DELETE_OPTIONS,
        "Eviction" => EVICTION,
        "PodDisruptionBudget" => PDB,
        "Deployment" => DEPLOYMENT,
        other => {
            return Err(format!(
                "protobuf bodies of kind {other:?} are not supported; send JSON"
            ))
        }
    };
    let mut v = decode(raw, schema)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3 | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_a_configmap() {
        let meta = [
            field(1, b"cm"),
            field(11, &[field(1, b"a"), field(2, b"b")].concat()),
        ]
        .concat();
        let raw = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [b"k8s\x00".to_vec(), field(1, &tm), field(2, &raw)].concat();
        let v = decode_body(&body).unwrap();
        assert_eq!(v["metadata"]["name"], json!("cm"));
        assert_eq!(v["metadata"]["labels"]["a"], json!("b"));
        assert_eq!(v["data"]["k"], json!("v"));
        assert_eq!(v["kind"], json!("ConfigMap"));
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn decodes_a_pdb() {
        let min = [vec![0x08, 1], field(3, b"50%")].concat();
        let max = vec![0x08, 0, 0x10, 2];
        let sel = field(1, &[field(1, b"app"), field(2, b"web")].concat());
        let spec = [field(1, &min), field(2, &sel), field(3, &max)].concat();
        let raw = [field(1, &field(1, b"pdb")), field(2, &spec)].concat();
        let tm = [field(1, b"policy/v1"), field(2, b"PodDisruptionBudget")].concat();
        let body = [b"k8s\x00".to_vec(), field(1, &tm), field(2, &raw)].concat();
        let v = decode_body(&body).unwrap();
        assert_eq!(v["spec"]["minAvailable"], json!("50%"));
        assert_eq!(v["spec"]["maxUnavailable"], json!(2));
        assert_eq!(v["spec"]["selector"]["matchLabels"]["app"], json!("web"));
    }
}
