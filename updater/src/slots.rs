//! Cluster-wide patch slots: coordination.k8s.io Leases `ospatch-slot-<i>`, at most
//! `maxConcurrency` of them held. A holder renews its Lease while it holds it; a Lease not
//! renewed for its duration is expired, and may be taken over only when the caller has decided
//! so from the holder Node's own state ([`crate::node::takeover`]: a node rebooting on purpose
//! keeps its slot until its reboot deadline). Release clears the holder so waiters watching the Lease see it free.
//! This module does not decide when to patch or what to do with a node.

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use std::time::Duration;

pub const SLOT_PREFIX: &str = "ospatch-slot-";
pub const SLOT_LABEL: &str = "ospatch.bootpatch.io/slot";
/// On a slot's Lease: the node that released it last. The waiters take turns from it.
pub const RELEASED_BY: &str = "ospatch.bootpatch.io/released-by";

/// How a slot was got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Free (absent, released, or never held).
    Fresh(String),
    /// Already ours (an agent that came back).
    Resumed(String),
    /// Expired: its holder (a node name) was gone past the lease duration.
    TakenOver { name: String, from: String },
}

impl Acquired {
    pub fn name(&self) -> &str {
        match self {
            Acquired::Fresh(n) | Acquired::Resumed(n) => n,
            Acquired::TakenOver { name, .. } => name,
        }
    }
}

#[derive(Clone)]
pub struct Slots {
    api: Api<Lease>,
    me: String,
    duration: Duration,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").field("me", &self.me).finish()
    }
}

pub fn slot_name(i: u32) -> String {
    format!("{SLOT_PREFIX}{i}")
}

pub fn slot_index(name: &str) -> Option<u32> {
    name.strip_prefix(SLOT_PREFIX)?.parse().ok()
}

/// The holder of a lease, if any.
pub fn holder(l: &Lease) -> Option<&str> {
    l.spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// The node that released a free lease last, if it says.
pub fn released_by(l: &Lease) -> Option<&str> {
    l.metadata
        .annotations
        .as_ref()?
        .get(RELEASED_BY)
        .map(String::as_str)
        .filter(|h| !h.is_empty())
}

/// Whose turn a released slot is. The nodes that prefer slot `slot` of `n` are the members
/// (sorted node names) whose position modulo `n` is `slot`; they take turns in that order,
/// round the ring, starting after the node that released it. `Some(1)` is `me` first in
/// line, `Some(k)` the k-th (whether the ones before it are waiting or not); `None` when
/// either node is not a member (the waiter does not know where it stands).
pub fn turn(members: &[String], n: u32, slot: u32, releaser: &str, me: &str) -> Option<u32> {
    let n = n.max(1) as usize;
    let pos = |who: &str| members.iter().position(|m| m == who);
    let (from, to) = (pos(releaser)?, pos(me)?);
    let len = members.len();
    // Walk the ring from just after the releaser to `me`, counting the slot's nodes.
    let steps = (to + len - from - 1) % len + 1;
    let k = (1..=steps)
        .map(|i| (from + i) % len)
        .filter(|&i| i % n == slot as usize)
        .count();
    Some(k as u32)
}

/// How long the waiter whose [`turn`] it is `k`-th waits before claiming a released slot:
/// the first at once, then one `step` more each time the turn doubles (2nd: 1 step, 3rd-4th:
/// 2, 5th-8th: 3, …). The first node in line that is waiting takes the slot, and the others
/// see it taken (on their watch) before their own time comes, so a release wakes one claim
/// instead of one from every waiter; the 1,000th node waits at most 10 steps.
pub fn claim_delay(k: u32, step: Duration) -> Duration {
    let doublings = u32::BITS - k.saturating_sub(1).leading_zeros();
    step * doublings
}

/// Whether a held lease has not been renewed within its duration.
pub fn expired(l: &Lease, now: chrono::DateTime<Utc>) -> bool {
    let Some(spec) = &l.spec else { return true };
    let dur = i64::from(spec.lease_duration_seconds.unwrap_or(60));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) => (now - t.0).num_milliseconds() > dur * 1000,
        None => true,
    }
}

/// When a held lease expires.
pub fn expires_at(l: &Lease) -> Option<chrono::DateTime<Utc>> {
    let spec = l.spec.as_ref()?;
    let dur = i64::from(spec.lease_duration_seconds.unwrap_or(60));
    let t = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    Some(t.0 + chrono::Duration::seconds(dur))
}

/// The duration written on a Lease for a configured one: whole seconds, at least one (the
/// API's unit, `leaseDurationSeconds`).
pub fn written_seconds(configured: Duration) -> i32 {
    configured.as_secs().clamp(1, i32::MAX as u64) as i32
}

/// How often a holder renews: a third of the duration written on the Lease, which is what the
/// other nodes judge its expiry by. (A configured duration under a second is written as one
/// second; renewing at a third of the shorter one would only load the API server, and wake
/// every node watching the Lease, more often.)
pub fn renew_every(configured: Duration) -> Duration {
    Duration::from_secs(written_seconds(configured) as u64) / 3
}

impl Slots {
    pub fn new(client: Client, namespace: &str, me: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            me: me.to_string(),
            duration,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn spec_for_me(&self, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Utc::now());
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(written_seconds(self.duration)),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One slot lease, if it exists.
    pub async fn get(&self, name: &str) -> Result<Option<Lease>, kube::Error> {
        self.api.get_opt(name).await
    }

    /// All slot leases.
    pub async fn list(&self) -> Result<Vec<Lease>, kube::Error> {
        Ok(self
            .api
            .list(&ListParams::default().labels(&format!("{SLOT_LABEL}=true")))
            .await?
            .items)
    }

    /// The slot this node holds, if any.
    pub async fn mine(&self) -> Result<Option<String>, kube::Error> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|l| holder(l) == Some(self.me.as_str()))
            .and_then(|l| l.metadata.name))
    }

    /// Tries one slot: create it, take it if free or expired, resume it if ours. `None` if
    /// someone else holds it (or won the race).
    pub async fn try_slot(
        &self,
        name: &str,
        current: Option<Lease>,
    ) -> Result<Option<Acquired>, kube::Error> {
        let current = match current {
            Some(c) => Some(c),
            None => self.api.get_opt(name).await?,
        };
        match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        labels: Some([(SLOT_LABEL.to_string(), "true".to_string())].into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec_for_me(0)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Some(Acquired::Fresh(name.to_string()))),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Some(l) => {
                let h = holder(&l).map(str::to_string);
                let result = match h.as_deref() {
                    Some(h) if h == self.me => Acquired::Resumed(name.to_string()),
                    None => Acquired::Fresh(name.to_string()),
                    Some(h) if expired(&l, Utc::now()) => Acquired::TakenOver {
                        name: name.to_string(),
                        from: h.to_string(),
                    },
                    Some(_) => return Ok(None),
                };
                let transitions = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0)
                    + i32::from(!matches!(result, Acquired::Resumed(_)));
                let mut spec = self.spec_for_me(transitions);
                if matches!(result, Acquired::Resumed(_)) {
                    spec.acquire_time = l.spec.as_ref().and_then(|s| s.acquire_time.clone());
                }
                let mut new = l.clone();
                new.spec = Some(spec);
                match self.api.replace(name, &PostParams::default(), &new).await {
                    Ok(_) => Ok(Some(result)),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Renews a held slot. `Ok(false)` if it is no longer ours (taken over).
    pub async fn renew(&self, name: &str) -> Result<bool, kube::Error> {
        let Some(l) = self.api.get_opt(name).await? else {
            return Ok(false);
        };
        if holder(&l) != Some(self.me.as_str()) {
            return Ok(false);
        }
        let mut new = l.clone();
        if let Some(s) = new.spec.as_mut() {
            s.renew_time = Some(MicroTime(Utc::now()));
        }
        match self.api.replace(name, &PostParams::default(), &new).await {
            Ok(_) => Ok(true),
            // Someone wrote it between our read and write: look again next time.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Releases a slot if it is ours (idempotent).
    pub async fn release(&self, name: &str) -> Result<(), kube::Error> {
        let Some(l) = self.api.get_opt(name).await? else {
            return Ok(());
        };
        if holder(&l) != Some(self.me.as_str()) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": l.metadata.resource_version,
                "annotations": {RELEASED_BY: self.me},
            },
            "spec": {"holderIdentity": null, "renewTime": null, "acquireTime": null}
        });
        match self
            .api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(self.release(name)).await,
            Err(e) => Err(e),
        }
    }
}

/// What a waiting node last concluded about slots it may not take yet: slot → (the Lease's
/// resourceVersion then, not before when). A held Lease that was not renewed keeps its version
/// while its holder is away (rebooting, for minutes), so the holder's Node need not be read
/// again, by every waiting node at every look, until that time comes or the Lease changes
/// (renewed, released, resumed by its holder).
#[derive(Debug, Default)]
pub struct NotYet(std::collections::HashMap<String, (Option<String>, chrono::DateTime<Utc>)>);

impl NotYet {
    /// Records that `slot` (at `lease`'s version) may not be taken before `t`.
    pub fn note(&mut self, slot: &str, lease: Option<&Lease>, t: chrono::DateTime<Utc>) {
        let rv = lease.and_then(|l| l.metadata.resource_version.clone());
        self.0.insert(slot.to_string(), (rv, t));
    }

    /// When `slot` may be looked at again, if its Lease is as it was when noted and that
    /// time has not come.
    pub fn until(
        &self,
        slot: &str,
        lease: Option<&Lease>,
        now: chrono::DateTime<Utc>,
    ) -> Option<chrono::DateTime<Utc>> {
        let (rv, t) = self.0.get(slot)?;
        let same = lease.and_then(|l| l.metadata.resource_version.as_ref()) == rv.as_ref();
        (same && rv.is_some() && now < *t).then_some(*t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64, dur: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(dur),
                renew_time: Some(MicroTime(
                    Utc::now() - chrono::Duration::seconds(renewed_secs_ago),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn expiry_and_holders() {
        assert!(!expired(&lease(Some("a"), 5, 10), Utc::now()));
        assert!(expired(&lease(Some("a"), 11, 10), Utc::now()));
        assert_eq!(holder(&lease(Some(""), 0, 10)), None);
        assert_eq!(holder(&lease(Some("n1"), 0, 10)), Some("n1"));
        assert_eq!(slot_index(&slot_name(7)), Some(7));
        assert_eq!(slot_index("other"), None);
    }

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("n{i:02}")).collect()
    }

    #[test]
    fn turns_go_round_the_ring_after_the_releaser() {
        // One slot: everyone takes turns in name order.
        let m = names(5);
        assert_eq!(turn(&m, 1, 0, "n01", "n02"), Some(1));
        assert_eq!(turn(&m, 1, 0, "n01", "n04"), Some(3));
        assert_eq!(turn(&m, 1, 0, "n01", "n00"), Some(4));
        // The releaser itself, waiting again, comes last.
        assert_eq!(turn(&m, 1, 0, "n01", "n01"), Some(5));
        // Not a member (yet, in a cached list): unknown.
        assert_eq!(turn(&m, 1, 0, "n01", "new"), None);
        assert_eq!(turn(&m, 1, 0, "gone", "n02"), None);
        // Three slots over 10 nodes: slot 1 is preferred by n01, n04, n07.
        let m = names(10);
        assert_eq!(turn(&m, 3, 1, "n01", "n04"), Some(1));
        assert_eq!(turn(&m, 3, 1, "n01", "n07"), Some(2));
        assert_eq!(turn(&m, 3, 1, "n07", "n01"), Some(1));
        // Released by a node that took it from another group (its steal pass).
        assert_eq!(turn(&m, 3, 1, "n05", "n07"), Some(1));
        assert_eq!(turn(&m, 3, 1, "n05", "n04"), Some(3));
    }

    #[test]
    fn claim_delays_grow_with_each_doubling_of_the_turn() {
        let s = Duration::from_secs(2);
        let d: Vec<u64> = [1, 2, 3, 4, 5, 8, 9, 1000]
            .iter()
            .map(|&k| claim_delay(k, s).as_secs())
            .collect();
        assert_eq!(d, [0, 2, 4, 4, 6, 6, 8, 20]);
        assert_eq!(claim_delay(0, s), Duration::ZERO);
    }

    #[test]
    fn not_yet_holds_until_its_time_or_a_new_version() {
        let mut l = lease(Some("a"), 30, 10);
        l.metadata.resource_version = Some("7".into());
        let now = Utc::now();
        let t = now + chrono::Duration::seconds(20);
        let mut n = NotYet::default();
        assert_eq!(n.until("s", Some(&l), now), None);
        n.note("s", Some(&l), t);
        assert_eq!(n.until("s", Some(&l), now), Some(t));
        assert_eq!(n.until("other", Some(&l), now), None);
        // Its time has come.
        assert_eq!(n.until("s", Some(&l), t), None);
        // The Lease changed (renewed, released, resumed by its holder).
        let mut renewed = l.clone();
        renewed.metadata.resource_version = Some("8".into());
        assert_eq!(n.until("s", Some(&renewed), now), None);
        // Gone, or without a version to compare: look again.
        assert_eq!(n.until("s", None, now), None);
        let mut bare = l.clone();
        bare.metadata.resource_version = None;
        n.note("s", Some(&bare), t);
        assert_eq!(n.until("s", Some(&bare), now), None);
    }

    #[test]
    fn renewal_follows_the_duration_written_on_the_lease() {
        assert_eq!(written_seconds(Duration::from_secs(60)), 60);
        assert_eq!(
            renew_every(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        // Whole seconds on the Lease: 1.5 s is written as 1 s, and renewed at a third of that.
        assert_eq!(written_seconds(Duration::from_millis(1500)), 1);
        assert_eq!(
            renew_every(Duration::from_millis(1500)),
            Duration::from_secs(1) / 3
        );
        // Under a second: written as 1 s, so renewed as for 1 s, not 30 times a second.
        assert_eq!(written_seconds(Duration::from_millis(100)), 1);
        assert_eq!(
            renew_every(Duration::from_millis(100)),
            Duration::from_secs(1) / 3
        );
    }
}
