//! The whole chain on one VM: the debian-12 image (a test variant with podman and curl) boots
//! with NoCloud user-data from `builder render`, bootpatch patches it on first boot from an
//! HTTP repository and reboots, the node joins, and the agent, from its OCI archive, runs in
//! podman as its DaemonSet pod would (privileged, host PID, the host root at /host, the
//! ServiceAccount token and CA where a projected volume puts them, KUBERNETES_SERVICE_HOST and
//! PORT). The agent then patches and reboots the machine for real, on demand and on schedule.
//!
//! The guest reaches the host only through QEMU's user-mode network with `restrict=on`: two
//! `guestfwd` rules (`builder boot --forward`) to loopback ports, the test API server over
//! HTTPS (6443) and the signed package repository over plain HTTP (8080, apt's http method).
//!
//! Stand-ins, named as such:
//! - KUBELET STAND-IN (a shell script in the guest, `kubelet-standin`): no kubelet can run here.
//!   It registers the Node, posts Ready and the boot id every few seconds, posts NotReady when
//!   stopped (as graceful node shutdown does), and, as a kubelet kills a deleted pod's
//!   containers, kills the agent's container when the test asks on a Node annotation.
//! - The Deployment's pods are API objects only (the test API server's controllers), and the
//!   second node is a SIMULATED host with a real agent on the host, queued for the slot.
//! - The podman container uses the host network: no CNI here (a DaemonSet pod would reach the
//!   API server through the cluster network).
//!
//! What is checked is read from the host only: the API server (as kubectl would), the
//! `kubectl ospatch` plugin and the guest's serial console. Needs root, qemu-system-x86, OVMF.

mod common;

use bootpatch_e2e::fixtures::Pkg;
use bootpatch_e2e::repo::{self, Key};
use bootpatch_e2e::vm::{self, Guest, HttpServer};
use common::Cluster;
use kube_testserver::fixtures;
use kube_testserver::resources::{ResourceDef, CONFIGMAPS, LEASES, NODES, PODS};
use kube_testserver::store::PatchType;
use kube_testserver::Options;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updater::agent::{Agent, AgentOptions};
use updater::kube_util::client_for_kubeconfig;
use updater::node as ann;
use updater::sim::{Behaviour, SimulatedHost};

const NS: &str = "bootpatch-system";
const NODE: &str = "vm-node";
const QUEUED: &str = "sim-node";
/// The Lease of a slot, shorter than a reboot under TCG, so the VM's reboot outlasts it.
const LEASE_SECONDS: u64 = 15;
/// Where the guest reaches the host's forwarded ports (`builder boot --forward`).
const GUEST_FORWARD_ADDR: &str = "10.0.2.100";
const API_PORT: u16 = 6443;
const REPO_PORT: u16 = 8080;
/// The whole guest's life: every phase's own wait is much shorter.
const GUEST_TIMEOUT: Duration = Duration::from_secs(1500);

const DAEMON: &str = "bootpatch-fixture-daemon";
const REBOOTER: &str = "bootpatch-fixture-reboot";

/// The kubelet stand-in. Reads /etc/kubelet-standin/env (API, NODE), the token and CA beside.
const KUBELET_STANDIN: &str = r#"#!/bin/sh
# STAND-IN for the kubelet (test only): registers the Node, posts Ready and this boot's id,
# NotReady when stopped, and kills the agent's container when the test asks (annotation
# bootpatch-test/kill-agent), as a kubelet kills a deleted pod's containers.
. /etc/kubelet-standin/env
d=/etc/kubelet-standin
boot=$(cat /proc/sys/kernel/random/boot_id)
api() {
  m=$1; p=$2; shift 2
  curl -sS --max-time 20 --cacert $d/ca.crt -H "Authorization: Bearer $(cat $d/token)" -X "$m" "$@" "$API$p"
}
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
status() {
  t=$(now)
  printf '{"status":{"conditions":[{"type":"Ready","status":"%s","reason":"%s","lastHeartbeatTime":"%s","lastTransitionTime":"%s"}],"nodeInfo":{"bootID":"%s","machineID":"%s","kernelVersion":"%s","osImage":"Debian GNU/Linux 12 (bookworm)","containerRuntimeVersion":"podman","kubeletVersion":"v1.32.0-standin","operatingSystem":"linux","architecture":"amd64"}}}' \
    "$1" "$2" "$t" "$t" "$boot" "$(cat /etc/machine-id)" "$(uname -r)" >/run/kubelet-standin.json
  api PATCH /api/v1/nodes/$NODE/status -H 'Content-Type: application/merge-patch+json' --data-binary @/run/kubelet-standin.json -o /dev/null
}
if [ "$1" = stop ]; then
  status False KubeletNotReady
  echo "BPT-KUBELET NotReady $boot"
  exit 0
fi
printf '{"apiVersion":"v1","kind":"Node","metadata":{"name":"%s","labels":{"kubernetes.io/hostname":"%s","kubernetes.io/os":"linux"}}}' "$NODE" "$NODE" >/run/kubelet-standin-node.json
until api POST /api/v1/nodes -H 'Content-Type: application/json' --data-binary @/run/kubelet-standin-node.json -o /dev/null -w '%{http_code}\n' | grep -qE '^(201|409)$'; do sleep 2; done
status True KubeletReady
echo "BPT-KUBELET Ready $boot"
killed=
while :; do
  sleep 2
  status True KubeletReady
  k=$(api GET /api/v1/nodes/$NODE | tr -d ' \n' | sed -n 's/.*"bootpatch-test\/kill-agent":"\([^"]*\)".*/\1/p')
  if [ -n "$k" ] && [ "$k" != "$killed" ]; then
    killed=$k
    podman kill bootpatch-agent >/dev/null 2>&1 && echo "BPT-KUBELET killed agent $k"
  fi
done
"#;

const KUBELET_UNIT: &str = "[Unit]\nDescription=kubelet STAND-IN (test only)\nAfter=network-online.target\nWants=network-online.target\n[Service]\nExecStart=/usr/local/sbin/kubelet-standin\nExecStop=/usr/local/sbin/kubelet-standin stop\nRestart=always\nRestartSec=2\nStandardOutput=journal+console\n[Install]\nWantedBy=multi-user.target\n";

/// The agent's pod, as the DaemonSet's spec asks for it, in podman, at every boot.
fn agent_unit() -> String {
    format!(
        "[Unit]\nDescription=bootpatch-updater in podman, as its DaemonSet pod (test)\nAfter=kubelet-standin.service\n\
[Service]\n\
ExecStartPre=/bin/sh -c 'test -s /var/lib/bootpatch-agent/agent.oci.tar || {{ curl -fsS --retry 10 --retry-all-errors -o /var/lib/bootpatch-agent/agent.tmp http://10.0.2.100:{REPO_PORT}/agent.oci.tar && mv /var/lib/bootpatch-agent/agent.tmp /var/lib/bootpatch-agent/agent.oci.tar; }}'\n\
ExecStart=/usr/bin/podman run --rm --replace --name bootpatch-agent --privileged --pid=host --network=host --memory=128m \
-v /:/host -v /var/lib/bootpatch-agent/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro \
-e NODE_NAME={NODE} -e POD_NAMESPACE={NS} -e KUBERNETES_SERVICE_HOST=10.0.2.100 -e KUBERNETES_SERVICE_PORT={API_PORT} \
oci-archive:/var/lib/bootpatch-agent/agent.oci.tar --namespace={NS} --lease-seconds={LEASE_SECONDS}\n\
Restart=always\nRestartSec=3\nTimeoutStartSec=300\nTimeoutStopSec=40\nStandardOutput=journal+console\nStandardError=journal+console\n\
[Install]\nWantedBy=multi-user.target\n"
    )
}

/// What the test reads from the guest on request (bootpatch-test/report annotation is not
/// needed: the agent's own records are on the Node); the audit and the agent's resource use
/// are printed by this unit every 30 s.
const PROBE: &str = "#!/bin/sh\n# Test instrumentation: dpkg's audit and the agent's memory and CPU, on the console.\nwhile :; do\n  p=$(pidof bootpatch-updater | cut -d' ' -f1)\n  if [ -n \"$p\" ]; then\n    rss=$(awk '/VmRSS/ {print $2}' /proc/$p/status)\n    ticks=$(awk '{print $14+$15}' /proc/$p/stat)\n    echo \"BPT-AGENT $(date +%s) pid=$p rss_kb=$rss cpu_ticks=$ticks hz=$(getconf CLK_TCK)\"\n  fi\n  echo \"BPT-AUDIT $(date +%s) [$(dpkg --audit 2>&1 | tr '\\n' ' ')]\"\n  sleep 30\ndone\n";

const PROBE_UNIT: &str = "[Unit]\nDescription=bootpatch test probe (test only)\n[Service]\nExecStart=/usr/local/sbin/bootpatch-test-probe\nStandardOutput=journal+console\n[Install]\nWantedBy=multi-user.target\n";

/// The daemon fixture: logs the version it started on, on the console.
const DAEMON_UNIT: &str = "[Unit]\nDescription=bootpatch test fixture daemon\n[Service]\nExecStart=/bin/sh /usr/lib/bootpatch-fixture/daemon\nStandardOutput=journal+console\n[Install]\nWantedBy=multi-user.target\n";
const DAEMON_SCRIPT: &str =
    "echo \"BPT-DAEMON started $(cat /usr/share/bootpatch-fixture/daemon)\"\nexec sleep infinity\n";

/// A daemon package's postinst on upgrade: restart the service (as deb-systemd-invoke does).
fn daemon_postinst(hold: bool) -> String {
    let hold = if hold {
        "  echo BPT-POSTINST-HOLD > /dev/console\n  sleep 40\n  echo BPT-POSTINST-DONE > /dev/console\n"
    } else {
        ""
    };
    format!("#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n{hold}  if [ -n \"$2\" ]; then systemctl restart {DAEMON}.service; else systemctl enable --now {DAEMON}.service; fi\nfi\n")
}

fn daemon(version: &str, out: &Path, hold: bool) -> PathBuf {
    Pkg::new(DAEMON, version)
        .file(
            "/usr/share/bootpatch-fixture/daemon",
            &format!("{version}\n"),
        )
        .file("/usr/lib/bootpatch-fixture/daemon", DAEMON_SCRIPT)
        .file(
            &format!("/usr/lib/systemd/system/{DAEMON}.service"),
            DAEMON_UNIT,
        )
        .postinst(&daemon_postinst(hold))
        .build(out)
}

/// A package whose upgrade asks for a reboot, as a kernel's does.
fn rebooter(version: &str, out: &Path) -> PathBuf {
    let mut p = Pkg::new(REBOOTER, version).file("/usr/share/bootpatch-fixture/reboot", version);
    if version != "1.0" {
        p = p.postinst(&format!("#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  touch /run/reboot-required\n  echo {REBOOTER} >> /run/reboot-required.pkgs\nfi\n"));
    }
    p.build(out)
}

fn b64(p: &Path) -> String {
    let o = std::process::Command::new("base64")
        .arg("-w0")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap()
}

fn b64_bytes(data: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), data).unwrap();
    b64(tmp.path())
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// One guest file in a cloud-config `write_files` list.
fn file(path: &str, mode: &str, content: &str) -> String {
    format!(
        "  - path: {path}\n    permissions: \"{mode}\"\n    content: |\n{}",
        indent(content, 6)
    )
}

fn file_b64(path: &str, content_b64: &str) -> String {
    format!("  - path: {path}\n    encoding: b64\n    content: {content_b64}\n")
}

fn values(key: &str) -> String {
    format!(
        "patchOnBoot: true\nrebootIfRequired: true\nsourcesMode: only\nretryDeadline: 40s\nlockWaitTimeout: 5m\n\
sources:\n  - name: patches\n    uris: [\"http://10.0.2.100:{REPO_PORT}/repo\"]\n    suites: [bookworm-updates]\n    components: [main]\n    signedBy: |\n{}\
joinCommand: [\"sh\", \"-c\", \"dpkg -i /var/tmp/bootpatch-fixtures/*.deb && systemctl enable --now --no-block kubelet-standin.service bootpatch-agent.service bootpatch-test-probe.service\"]\n",
        indent(key, 6)
    )
}

/// Timestamped samples of what the test watches on the API server, every 250 ms.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    /// (slot, holder) of every slot Lease with a holder.
    holders: Vec<(String, String)>,
    vm_step: String,
    vm_result: String,
    vm_cordoned: bool,
    queued_step: String,
    /// Ready pods of the Deployment (not being deleted).
    web_ready: usize,
}

fn sample(c: &Cluster, t0: Instant) -> Sample {
    let node = |n: &str| c.server.get(&NODES, "", n);
    let a = |n: &Option<Value>, k: &str| {
        n.as_ref()
            .and_then(|n| n["metadata"]["annotations"][k].as_str())
            .unwrap_or("")
            .to_string()
    };
    let vm = node(NODE);
    let q = node(QUEUED);
    let holders = c
        .server
        .list(&LEASES, Some(NS))
        .iter()
        .filter_map(|l| {
            let h = l["spec"]["holderIdentity"]
                .as_str()
                .filter(|h| !h.is_empty())?;
            Some((l["metadata"]["name"].as_str()?.to_string(), h.to_string()))
        })
        .collect();
    let web_ready = c
        .server
        .list(&PODS, Some("default"))
        .iter()
        .filter(|p| {
            p["metadata"]["labels"]["app"] == "web"
                && p["metadata"]["deletionTimestamp"].is_null()
                && kube_testserver::controllers::pod_ready(p)
        })
        .count();
    Sample {
        at: t0.elapsed(),
        holders,
        vm_step: a(&vm, ann::STEP),
        vm_result: a(&vm, ann::LAST_RESULT),
        vm_cordoned: vm
            .as_ref()
            .is_some_and(|n| n["spec"]["unschedulable"] == true),
        queued_step: a(&q, ann::STEP),
        web_ready,
    }
}

struct Run {
    c: Arc<Cluster>,
    guest: Option<Guest>,
    serial: PathBuf,
    samples: Arc<Mutex<Vec<Sample>>>,
    phases: Vec<(String, Duration)>,
    phase_start: Instant,
}

impl Run {
    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// The serial console's tail and the agent's last lines, for a failure message.
    fn tails(&self) -> String {
        let con = self.console();
        let keep = std::env::temp_dir().join("cluster_vm-serial.log");
        let _ = std::fs::write(&keep, &con);
        let lines: Vec<&str> = con.lines().collect();
        let agent: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("bootpatch-updater") || l.contains("podman"))
            .collect();
        format!(
            "--- serial tail (all of it in {}) ---\n{}\n--- agent lines ---\n{}\n--- VM node ---\n{}\n--- queued node ---\n{}",
            keep.display(),
            lines[lines.len().saturating_sub(60)..].join("\n"),
            agent[agent.len().saturating_sub(30)..].join("\n"),
            serde_json::to_string_pretty(&self.c.server.get(&NODES, "", NODE)).unwrap(),
            serde_json::to_string_pretty(&self.c.server.get(&NODES, "", QUEUED)).unwrap(),
        )
    }

    fn phase(&mut self, name: &str) {
        let took = self.phase_start.elapsed();
        eprintln!("cluster_vm: phase {name}: {:.1} s", took.as_secs_f64());
        self.phases.push((name.to_string(), took));
        self.phase_start = Instant::now();
    }

    /// Waits for `cond` on the API server; fails with the tails at the timeout.
    fn wait(&self, what: &str, secs: u64, mut cond: impl FnMut(&Run) -> bool) -> Duration {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(secs) {
            if cond(self) {
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "timed out after {secs} s waiting for {what}\n{}",
            self.tails()
        );
    }

    fn wait_console(&self, text: &str, after: usize, secs: u64) -> Duration {
        self.wait(&format!("{text:?} on the console"), secs, |r| {
            r.console().get(after..).is_some_and(|c| c.contains(text))
        })
    }

    fn ann(&self, n: &str, key: &str) -> String {
        self.c
            .server
            .get(&NODES, "", n)
            .and_then(|n| {
                n["metadata"]["annotations"][key]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    fn boot_id(&self) -> String {
        self.c
            .server
            .get(&NODES, "", NODE)
            .and_then(|n| {
                n["status"]["nodeInfo"]["bootID"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    fn ospatch(&self, args: &[&str]) -> common::Out {
        self.c.run_for(
            env!("CARGO_BIN_EXE_kubectl-ospatch"),
            args,
            Duration::from_secs(30),
        )
    }

    /// The node's last result is `result`, and its last message `message` when given.
    fn assert_last(&self, node: &str, result: &str, message: Option<&str>) {
        assert_eq!(self.ann(node, ann::LAST_RESULT), result, "{}", self.tails());
        if let Some(m) = message {
            assert_eq!(self.ann(node, ann::LAST_MESSAGE), m, "{}", self.tails());
        }
    }

    fn samples_since(&self, at: Duration) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= at)
            .cloned()
            .collect()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(g) = self.guest.take() {
            g.power_cut();
        }
    }
}

/// The VM node's steps from `since` on, as the API server committed them: the
/// time (from `t0`) each began, read from the Node's write history. A step
/// that lasts less than the samples' 250 ms (drained; uncordoned, one write
/// before idle) is there too.
fn step_times(c: &Cluster, t0: Instant, since: Duration) -> Vec<(String, Duration)> {
    let (changes, complete) = c.server.with_store(|s| s.changes(&NODES));
    assert!(complete, "the server's history dropped changes");
    let mut out: Vec<(String, Duration)> = Vec::new();
    for e in changes.iter().filter(|e| e.obj["metadata"]["name"] == NODE) {
        let at = e.at.saturating_duration_since(t0);
        let step = e.obj["metadata"]["annotations"][ann::STEP]
            .as_str()
            .unwrap_or_default();
        if at >= since && out.last().is_none_or(|(st, _)| st != step) {
            out.push((step.to_string(), at));
        }
    }
    out
}

fn merge(c: &Cluster, def: &ResourceDef, ns: &str, name: &str, patch: Value) {
    c.server
        .with_store(|s| s.patch(def, ns, name, PatchType::Merge, &patch, false, false))
        .unwrap_or_else(|e| panic!("patching {name}: {e:?}"));
}

fn agent_opts_for_queued() -> AgentOptions {
    let mut o = AgentOptions::new(QUEUED);
    o.namespace = NS.into();
    o.lease_duration = Duration::from_secs(LEASE_SECONDS);
    o.steal_interval = Duration::from_secs(1);
    o.window_check = Duration::from_secs(1);
    o.node_ready_timeout = Duration::from_secs(20);
    o
}

#[test]
fn agent_patches_and_reboots_a_real_node_in_podman() {
    // The queued node's agent runs in this process: its log on stderr.
    updater::telemetry::init(false);
    let t0 = Instant::now();
    // The image: debian-12 with podman (the container runtime) and curl (the kubelet
    // stand-in's client), raw, from the shared image's package cache.
    let raw = bootpatch_e2e::images::variant("debian-12-cluster", &["podman", "curl"], "");
    let image = vm::debian12_image();
    let work = tempfile::Builder::new()
        .prefix("bootpatch-cluster-vm-")
        .tempdir_in(bootpatch_e2e::cache_dir())
        .unwrap();
    let d = work.path();

    // The API server, over HTTPS, its certificate valid for the guest's forward address.
    let c = Arc::new(Cluster::start_with(Options {
        pod_start_delay: Duration::from_millis(500),
        extra_sans: vec![GUEST_FORWARD_ADDR.to_string()],
        // Every change kept: the step changes are checked against the machine at the end.
        history_size: 1_000_000,
        ..Options::default()
    }));
    let manifests = c.run_for(
        env!("CARGO_BIN_EXE_kubectl-ospatch"),
        &[
            "manifests",
            "--namespace",
            NS,
            "--image",
            "localhost/bootpatch-updater:test",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(manifests.code, 0, "{manifests:?}");
    let install = d.join("install.yaml");
    std::fs::write(&install, &manifests.stdout).unwrap();
    let o = c.kubectl(&["apply", "-f", install.to_str().unwrap()]);
    assert_eq!(o.code, 0, "kubectl apply: {o:?}");
    // The manifests' patch policy, with one slot for the two nodes.
    merge(
        &c,
        &CONFIGMAPS,
        NS,
        updater::policy::PATCH_POLICY_CONFIGMAP,
        json!({"data": {"maxConcurrency": "1"}}),
    );
    let sa_token = c
        .server
        .issue_service_account_token(NS, "bootpatch-updater", None);
    let kubelet_token = c.server.admin_token().to_string();
    let ca = c.server.ca_pem().unwrap().to_string();

    // The repository and the agent's image, served over HTTP from one folder.
    let served = d.join("served");
    let repo_dir = served.join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let debs = d.join("debs");
    let (mut offered, point) = vm::patch_packages(&image, &debs);
    let key = Key::generate("patches");
    repo::build(&repo_dir, "bookworm-updates", &offered, Some(&key));
    let oci = served.join("agent.oci.tar");
    let agent_bin = std::env::var("AGENT_BIN").unwrap_or_else(|_| {
        bootpatch_e2e::sh({
            let mut c = std::process::Command::new("./scripts/build-agent");
            c.current_dir(bootpatch_e2e::workspace());
            c
        })
        .trim()
        .to_string()
    });
    let mut c_oci = std::process::Command::new(bootpatch_e2e::images::builder_bin());
    c_oci
        .args(["agent-image", "--agent", &agent_bin, "--out"])
        .arg(&oci);
    bootpatch_e2e::sh(c_oci);
    let http = HttpServer::dir(&served);

    // What the node joins with: the fixtures at their first versions (installed by the
    // join command), the kubelet stand-in, the agent's pod unit and its projected volume.
    let v1 = [daemon("1.0", &debs, false), rebooter("1.0", &debs)];
    let mut part = String::from("#cloud-config\nwrite_files:\n");
    for deb in &v1 {
        part += &file_b64(
            &format!(
                "/var/tmp/bootpatch-fixtures/{}",
                deb.file_name().unwrap().to_string_lossy()
            ),
            &b64(deb),
        );
    }
    part += &file(
        "/etc/kubelet-standin/env",
        "0644",
        &format!("API=https://10.0.2.100:{API_PORT}\nNODE={NODE}\n"),
    );
    part += &file("/etc/kubelet-standin/token", "0600", &kubelet_token);
    part += &file("/etc/kubelet-standin/ca.crt", "0644", &ca);
    // As a projected volume writes it: the token's bytes alone, no line end.
    part += &file_b64(
        "/var/lib/bootpatch-agent/sa/token",
        &b64_bytes(sa_token.as_bytes()),
    );
    part += &file("/var/lib/bootpatch-agent/sa/ca.crt", "0644", &ca);
    part += &file("/var/lib/bootpatch-agent/sa/namespace", "0644", NS);
    part += &file("/usr/local/sbin/kubelet-standin", "0755", KUBELET_STANDIN);
    part += &file(
        "/etc/systemd/system/kubelet-standin.service",
        "0644",
        KUBELET_UNIT,
    );
    part += &file(
        "/etc/systemd/system/bootpatch-agent.service",
        "0644",
        &agent_unit(),
    );
    part += &file("/usr/local/sbin/bootpatch-test-probe", "0755", PROBE);
    part += &file(
        "/etc/systemd/system/bootpatch-test-probe.service",
        "0644",
        PROBE_UNIT,
    );
    let seed = vm::seed_parts(&values(&key.armored), &[&part], d, "node", &[]);
    let disk = d.join("node.qcow2");
    vm::overlay(&raw, &disk);
    let serial = d.join("serial.log");
    // The only guest of its test binary: both virtual CPUs (a lone guest boots faster so),
    // unless the runner boots another binary's guests beside it.
    let forward = vec![
        "--forward".to_string(),
        format!("{API_PORT}:{}", c.server.addr().port()),
        "--forward".to_string(),
        format!("{REPO_PORT}:{}", http.port),
        "--cpus".to_string(),
        vm::lone_guest_cpus(),
    ];
    let samples = Arc::new(Mutex::new(Vec::new()));
    {
        let (c, s) = (c.clone(), samples.clone());
        std::thread::spawn(move || loop {
            let smp = sample(&c, t0);
            s.lock().unwrap().push(smp);
            std::thread::sleep(Duration::from_millis(250));
            if Arc::strong_count(&s) == 1 {
                return;
            }
        });
    }
    let mut run = Run {
        c: c.clone(),
        guest: None,
        serial: serial.clone(),
        samples,
        phases: Vec::new(),
        phase_start: t0,
    };
    run.phase("setup (image, repository, agent image)");

    // 1. First boot: bootpatch patches from the HTTP repository, reboots, and the node joins.
    run.guest = Some(Guest::start_as(
        vm::Start::BootWith { args: &forward },
        &disk,
        &seed,
        None,
        &serial,
        GUEST_TIMEOUT,
    ));
    run.wait_console("BPT-KUBELET Ready", 0, 600);
    let first_boot_id = run.boot_id();
    assert_eq!(
        vm::boots(&run.console()),
        2,
        "first boot patched and rebooted once before joining\n{}",
        run.tails()
    );
    run.wait("the agent to publish the node's patch state", 300, |r| {
        r.ann(NODE, ann::PATCHED_VERSION) == point
    });
    assert!(
        run.ann(NODE, ann::FIRST_BOOT_RESULT)
            .starts_with("patched at "),
        "{}",
        run.tails()
    );
    run.phase("first boot: patch, reboot, join, agent up");

    // 2. The queued node: a simulated host with a real agent, on the host.
    c.server.add_node(QUEUED).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let queued_host = {
        let cc = c.clone();
        Arc::new(
            SimulatedHost::with_behaviour(
                QUEUED,
                Behaviour::patched(
                    Duration::from_secs(2),
                    Duration::from_secs(3),
                    "12.0",
                    "12.1",
                ),
            )
            .with_reboot_hook(Arc::new(move |node, down| {
                cc.server.simulate_node_reboot(node, down);
            })),
        )
    };
    let _queued_agent = {
        let _g = rt.enter();
        let kube = client_for_kubeconfig(&c.server.kubeconfig(), Duration::from_secs(60)).unwrap();
        let host = queued_host.clone();
        rt.spawn(host.clone().supervise(move || {
            let agent = Agent::new(agent_opts_for_queued(), kube.clone(), host.clone());
            async move {
                if let Err(e) = agent.run().await {
                    eprintln!("queued agent ended: {e:#}");
                }
            }
        }))
    };

    // 3. On demand: newer packages (one asks for a reboot; the daemon must restart on its new
    // version), a Deployment under a PDB on the VM's node, then `kubectl ospatch now NODE`.
    // Its pods land on the VM node: the queued node is cordoned until they are Running.
    merge(
        &c,
        &NODES,
        "",
        QUEUED,
        json!({"spec": {"unschedulable": true}}),
    );
    c.server
        .apply(fixtures::deployment("default", "web", 2))
        .unwrap();
    c.server
        .apply(fixtures::pdb_min_available(
            "default",
            "web",
            "web",
            json!(1),
        ))
        .unwrap();
    run.wait("the Deployment's pods Running on the VM node", 60, |r| {
        r.c.server
            .pods_on_node(NODE)
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web")
            .filter(|p| kube_testserver::controllers::pod_ready(p))
            .count()
            == 2
    });
    merge(
        &c,
        &NODES,
        "",
        QUEUED,
        json!({"spec": {"unschedulable": false}}),
    );
    offered.push(daemon("2.0", &debs, false));
    offered.push(rebooter("2.0", &debs));
    // A newer point release too, so the Patched Version moves with this run.
    let (base_files, _, point) = bootpatch_e2e::fixtures::point_release_n(
        &vm::cached_deb(&image.cache, "base-files"),
        &debs,
        100,
    );
    offered.push(base_files);
    repo::build(&repo_dir, "bookworm-updates", &offered, Some(&key));
    let before_boot = run.boot_id();
    let con_mark = run.console().len();
    let asked = t0.elapsed();
    let asked_at = chrono::Utc::now();
    let o = run.ospatch(&["-n", NS, "now", NODE]);
    assert_eq!(o.code, 0, "kubectl ospatch now: {o:?}");
    run.wait("the VM node to take the slot", 60, |r| {
        r.ann(NODE, ann::SLOT)
            .starts_with(updater::slots::SLOT_PREFIX)
    });
    // The queued node asks while the VM node holds the only slot.
    let o = run.ospatch(&["-n", NS, "now", QUEUED]);
    assert_eq!(o.code, 0, "kubectl ospatch now {QUEUED}: {o:?}");
    run.wait_console("BPT-DAEMON started 2.0", con_mark, 400);
    run.wait("the VM node to reboot (a new boot id)", 400, |r| {
        let b = r.boot_id();
        !b.is_empty() && b != before_boot
    });
    run.wait("the VM node's run to end (idle, uncordoned)", 400, |r| {
        r.ann(NODE, ann::STEP) == "idle"
            && r.c
                .server
                .get(&NODES, "", NODE)
                .is_some_and(|n| n["spec"]["unschedulable"] != true)
    });
    let done = t0.elapsed();
    run.wait("the queued node to get the slot and finish", 120, |r| {
        r.ann(QUEUED, ann::LAST_RESULT) == "success" && r.ann(QUEUED, ann::STEP) == "idle"
    });
    run.phase("on demand: drain, apply, reboot, uncordon; queued node after");

    let s = run.samples_since(asked);
    // The slot: the VM node held it through its reboot; the queued node only after.
    for x in &s {
        assert_ne!(
            x.vm_result, "failed",
            "the VM node was marked failed at {:?}",
            x.at
        );
        assert_ne!(x.queued_step, "failed", "the queued node failed: {x:?}");
        assert!(x.holders.len() <= 1, "more than one slot held: {x:?}");
        // The agent records idle, then releases the slot: the queued node may hold it once
        // the VM node is back at idle, after the reboot, never before. (A sample reads the
        // node before the Leases, so it may still show the step before idle, `uncordoned`.)
        if x.holders.iter().any(|(_, h)| h == QUEUED) {
            assert!(
                matches!(x.vm_step.as_str(), "uncordoned" | "idle")
                    && !x.vm_cordoned
                    && s.iter().any(|y| y.at < x.at && y.vm_step == "rebooting"),
                "the queued node held a slot while the VM node's run was not over: {x:?}"
            );
        }
        assert!(
            x.web_ready >= 1,
            "the PDB (minAvailable 1) was violated: {x:?}"
        );
    }
    assert!(
        s.iter().any(|x| x.vm_cordoned),
        "the VM node was never seen cordoned"
    );
    let steps = step_times(&c, t0, asked);
    eprintln!("cluster_vm: VM node steps after `ospatch now` at {asked:?}: {steps:?}");
    let seq: Vec<&str> = steps
        .iter()
        .map(|(st, _)| st.as_str())
        .skip_while(|st| *st != "slot-held")
        .collect();
    assert_eq!(
        seq,
        [
            "slot-held",
            "cordoned",
            "drained",
            "patching",
            "rebooting",
            "uncordoned",
            "idle"
        ],
        "the VM node's steps: {steps:?}"
    );
    let at = |st: &str| {
        steps
            .iter()
            .find(|(x, _)| x == st)
            .map(|(_, t)| *t)
            .unwrap()
    };
    // The slot is taken once `bootpatch check` has found patches.
    let took = at("slot-held");
    eprintln!(
        "cluster_vm: ospatch now -> uncordoned {:.1} s: check {:.1}, slot+cordon+drain {:.1}, apply {:.1}, reboot+Ready {:.1}, uncordon {:.1}",
        (done - asked).as_secs_f64(),
        (took - asked).as_secs_f64(),
        (at("patching") - took).as_secs_f64(),
        (at("rebooting") - at("patching")).as_secs_f64(),
        (at("uncordoned") - at("rebooting")).as_secs_f64(),
        (done - at("uncordoned")).as_secs_f64(),
    );
    assert!(
        s.iter().any(|x| x.vm_step == "rebooting"
            && x.at > at("rebooting") + Duration::from_secs(LEASE_SECONDS)),
        "the reboot did not outlast the Lease ({LEASE_SECONDS} s): the test shows nothing"
    );
    // The web pods moved: none of the originals is left, two Ready elsewhere or back.
    let web: Vec<Value> = c
        .server
        .list(&PODS, Some("default"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web")
        .collect();
    assert!(
        web.iter()
            .filter(|p| kube_testserver::controllers::pod_ready(p))
            .count()
            >= 2,
        "{web:#?}"
    );
    // bootpatch ran as a host unit (its journal line on the console), and the status shows
    // this run's patch.
    let con = run.console();
    assert!(
        con[con_mark..].contains("bootpatch-apply"),
        "no bootpatch-apply unit on the console\n{}",
        run.tails()
    );
    let st = run.ospatch(&["-n", NS, "status"]);
    assert_eq!(st.code, 0, "{st:?}");
    let row = st
        .stdout
        .lines()
        .find(|l| l.starts_with(NODE))
        .unwrap_or_else(|| panic!("{st:?}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], point, "Patched Version: {row}");
    assert_eq!(run.ann(NODE, ann::PATCHED_VERSION), point, "{row}");
    let applied = chrono::DateTime::parse_from_rfc3339(cols[2])
        .unwrap_or_else(|e| panic!("Last Applied Patch Time {row}: {e}"));
    assert!(
        applied >= asked_at - chrono::Duration::seconds(2),
        "{row} vs {asked_at}"
    );

    run.assert_last(NODE, "success", Some("bootpatch: patched"));

    // 4. On schedule: a run a minute or two ahead, with nothing new to install.
    let booted = run.boot_id();
    let next = chrono::Utc::now() + chrono::Duration::seconds(70);
    use chrono::Timelike;
    let cron = format!("{} {} * * *", next.minute(), next.hour());
    let sched_from = t0.elapsed();
    merge(
        &c,
        &CONFIGMAPS,
        NS,
        updater::policy::PATCH_POLICY_CONFIGMAP,
        json!({"data": {"schedule": cron, "timeZone": "UTC"}}),
    );
    let start_before = run.ann(NODE, ann::LAST_RUN_START);
    run.wait("the scheduled run to end", 300, |r| {
        r.ann(NODE, ann::LAST_RUN_START) != start_before && r.ann(NODE, ann::STEP) == "idle"
    });
    // `bootpatch check` in the guest finds nothing: the run ends before the slot, without a
    // cordon or a drain (the sampler would have seen either).
    run.assert_last(
        NODE,
        "up-to-date",
        Some("scheduled patch run: bootpatch check: nothing to install, no reboot required; the node was not cordoned or drained"),
    );
    assert_eq!(run.boot_id(), booted, "a run with nothing to do rebooted");
    let seen = run.samples_since(sched_from);
    assert!(
        !seen
            .iter()
            .any(|x| x.vm_cordoned || x.holders.iter().any(|(_, h)| h == NODE)),
        "the scheduled run with nothing pending took a slot or cordoned\n{}",
        run.tails()
    );
    merge(
        &c,
        &CONFIGMAPS,
        NS,
        updater::policy::PATCH_POLICY_CONFIGMAP,
        json!({"data": {"schedule": ""}}),
    );
    run.phase("scheduled run, nothing to do");

    // 5. The agent killed mid-apply: its container is killed while dpkg runs a postinst.
    offered.push(daemon("3.0", &debs, true));
    repo::build(&repo_dir, "bookworm-updates", &offered, Some(&key));
    let mark = run.console().len();
    let start_before = run.ann(NODE, ann::LAST_RUN_START);
    let o = run.ospatch(&["-n", NS, "now", NODE]);
    assert_eq!(o.code, 0, "{o:?}");
    run.wait_console("BPT-POSTINST-HOLD", mark, 300);
    merge(
        &c,
        &NODES,
        "",
        NODE,
        json!({"metadata": {"annotations": {"bootpatch-test/kill-agent": "1"}}}),
    );
    run.wait_console("BPT-KUBELET killed agent 1", mark, 60);
    run.wait_console("BPT-DAEMON started 3.0", mark, 300);
    run.wait("the cycle to finish after the agent came back", 300, |r| {
        r.ann(NODE, ann::LAST_RUN_START) != start_before
            && r.ann(NODE, ann::STEP) == "idle"
            && !r.ann(NODE, ann::LAST_RESULT).is_empty()
    });
    run.assert_last(NODE, "success", None);
    let audit_mark = run.console().len();
    run.wait_console("BPT-AUDIT", audit_mark, 60);
    let con = run.console();
    let audit = con[audit_mark..]
        .lines()
        .find(|l| l.contains("BPT-AUDIT"))
        .unwrap()
        .to_string();
    assert!(audit.trim_end().ends_with("[]"), "dpkg --audit: {audit}");
    run.phase("agent killed mid-apply");

    // 6. The repository down: `bootpatch check` fails mirror-unreachable after bootpatch's
    // deadline, and the run ends there: never cordoned, no slot taken (the apply would fail
    // the same way; draining for it would move the workloads for nothing).
    http.down();
    let down_from = t0.elapsed();
    let start_before = run.ann(NODE, ann::LAST_RUN_START);
    let o = run.ospatch(&["-n", NS, "now", NODE]);
    assert_eq!(o.code, 0, "{o:?}");
    run.wait("the run with the repository down to end", 300, |r| {
        r.ann(NODE, ann::LAST_RUN_START) != start_before && r.ann(NODE, ann::STEP) == "idle"
    });
    run.assert_last(NODE, "patch-failed", None);
    let msg = run.ann(NODE, ann::LAST_MESSAGE);
    assert!(
        msg.contains("bootpatch check failed with exit code 5 (mirror-unreachable)")
            && msg.ends_with("the node was not cordoned or drained"),
        "{msg}\n{}",
        run.tails()
    );
    let n = c.server.get(&NODES, "", NODE).unwrap();
    assert_ne!(n["spec"]["unschedulable"], true, "left cordoned");
    assert!(
        !run.samples_since(down_from)
            .iter()
            .any(|x| x.vm_cordoned || x.holders.iter().any(|(_, h)| h == NODE)),
        "the run with the repository down took a slot or cordoned\n{}",
        run.tails()
    );
    run.phase("repository down");

    // The agent's resource use in the guest, from the probe's samples: over the whole test,
    // and (when CLUSTER_VM_IDLE_SECS is set: `make bench-agent-idle` sets 300) over an idle
    // stretch at the end, with no run going on.
    let whole = agent_samples(&run.console());
    if let Some(line) = usage("whole test", &whole) {
        eprintln!("cluster_vm: agent in the guest, {line}");
    }
    if let Some(secs) = std::env::var("CLUSTER_VM_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
    {
        let mark = run.console().len();
        std::thread::sleep(Duration::from_secs(secs));
        let idle = agent_samples(&run.console()[mark..]);
        let line = usage(&format!("idle {secs} s"), &idle)
            .unwrap_or_else(|| panic!("no probe samples while idle\n{}", run.tails()));
        eprintln!("cluster_vm: agent in the guest, {line}");
        run.phase("idle");
    }
    for (name, took) in &run.phases {
        eprintln!("cluster_vm: {name}: {:.1} s", took.as_secs_f64());
    }
    eprintln!(
        "cluster_vm: first boot id {first_boot_id}, total {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Every step change of both nodes, by the real agent in the guest, the queued node's
    // agent and the plugin, was a transition of the state machine.
    common::assert_step_changes_allowed(&c.server, 0);
    drop(rt);
}

/// The probe's `BPT-AGENT` samples on a console: (guest time, RSS kB, CPU ticks, ticks per s).
fn agent_samples(con: &str) -> Vec<(u64, u64, u64, u64)> {
    con.lines()
        .filter_map(|l| {
            let l = &l[l.find("BPT-AGENT ")? + 10..];
            let f: Vec<&str> = l.split_whitespace().collect();
            let v = |k: &str| {
                f.iter()
                    .find_map(|x| x.strip_prefix(k))
                    .and_then(|x| x.parse::<u64>().ok())
            };
            Some((
                f.first()?.parse().ok()?,
                v("rss_kb=")?,
                v("cpu_ticks=")?,
                v("hz=")?,
            ))
        })
        .collect()
}

/// RSS and CPU of one agent process over the samples: the agent restarts in this test, so
/// only the last process's samples (CPU ticks never fall within one process) are counted.
fn usage(what: &str, samples: &[(u64, u64, u64, u64)]) -> Option<String> {
    let start = samples
        .windows(2)
        .rposition(|w| w[1].2 < w[0].2)
        .map_or(0, |i| i + 1);
    let s = &samples[start..];
    let (first, last) = (s.first()?, s.last()?);
    let wall = last.0.saturating_sub(first.0);
    let cpu = (last.2 - first.2) as f64 / last.3.max(1) as f64;
    let (min, max) = (s.iter().map(|a| a.1).min()?, s.iter().map(|a| a.1).max()?);
    Some(format!(
        "{what}: RSS {min}-{max} kB over {} samples; CPU {cpu:.2} s over {wall} s ({:.2} % of one CPU)",
        s.len(),
        if wall > 0 { 100.0 * cpu / wall as f64 } else { 0.0 }
    ))
}
