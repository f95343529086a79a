//! The two policies the agent obeys, parsed strictly from ConfigMap data: the drain policy
//! (the reference page's `palette-agent-config`: `drain`, `profiling`, `feature.workloads`) and
//! the patch policy (schedule, time zone, reboot, on-demand, concurrency, windows, pause).
//! Parsing is pure; what to do with a policy that does not parse (keep the last good one)
//! is the agent's business, not this module's.

use chrono::{DateTime, Datelike, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// Default name of the drain policy ConfigMap (the reference page's).
pub const DRAIN_POLICY_CONFIGMAP: &str = "palette-agent-config";
/// Default name of the patch policy ConfigMap.
pub const PATCH_POLICY_CONFIGMAP: &str = "bootpatch-patch-policy";

/// A policy that did not parse: names the key and the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

fn perr(key: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// The `drain` key: kubectl drain's knobs with the reference page's names, types and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainPolicy {
    /// 0 (or unset) = no timeout. JSON number in nanoseconds, or a Go duration string.
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Seconds; negative = the pod's own terminationGracePeriodSeconds.
    #[serde(default = "minus_one")]
    pub grace_period: i64,
    #[serde(default)]
    pub delete_local_data: bool,
    #[serde(default)]
    pub ignore_daemon_sets: bool,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub disable_eviction: bool,
    /// Seconds; 0 = wait for every pod.
    #[serde(default)]
    pub skip_wait_for_delete_timeout: u64,
}

fn minus_one() -> i64 {
    -1
}

impl Default for DrainPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::ZERO,
            grace_period: -1,
            delete_local_data: false,
            ignore_daemon_sets: false,
            force: false,
            disable_eviction: false,
            skip_wait_for_delete_timeout: 0,
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Nanos(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Nanos(n) if n < 0 => Err(serde::de::Error::custom(format!(
            "timeout {n}: must not be negative"
        ))),
        Raw::Nanos(n) => Ok(Duration::from_nanos(n as u64)),
        Raw::Text(t) => parse_go_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Parses a Go duration string (`600s`, `10m`, `1h30m`, `1.5s`, `250ms`, `0`), by the one
/// duration grammar ([`bootpatch::duration::parse_go`]); errors name the `timeout` key.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    use bootpatch::duration::TermError;
    bootpatch::duration::parse_go(text).map_err(|e| match e {
        TermError::MissingUnit => format!("timeout {text:?}: missing unit (ns, us, ms, s, m, h)"),
        TermError::Empty | TermError::NoNumber => {
            format!("timeout {text:?}: not a duration (e.g. \"600s\", \"10m\")")
        }
        e => format!("timeout {text:?}: {e}"),
    })
}

/// Everything in the drain policy ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub drain: DrainPolicy,
    /// `profiling: enable` serves a profiling endpoint on port 8082.
    pub profiling: bool,
    /// `feature.workloads: enable` records which pods moved where on each run.
    pub workloads: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            drain: DrainPolicy::default(),
            profiling: false,
            workloads: true,
        }
    }
}

fn enable_flag(key: &str, value: Option<&String>, default: bool) -> Result<bool, PolicyError> {
    match value.map(|v| v.trim()) {
        None | Some("") => Ok(default),
        Some("enable") => Ok(true),
        Some("disable") => Ok(false),
        Some(other) => Err(perr(
            key,
            format!("{other:?} is not \"enable\" or \"disable\""),
        )),
    }
}

/// Parses the drain policy ConfigMap's data. Returns the config and warnings (a timeout under
/// one second: the reference page's example says 600000000 ns, which is 0.6 s).
pub fn parse_agent_config(
    data: &BTreeMap<String, String>,
) -> Result<(AgentConfig, Vec<String>), PolicyError> {
    let mut warnings = Vec::new();
    let drain = match data.get("drain").map(|s| s.trim()) {
        None | Some("") => DrainPolicy::default(),
        Some(text) => serde_json::from_str::<DrainPolicy>(text)
            .map_err(|e| perr("drain", format!("{e} in {text:?}")))?,
    };
    if !drain.timeout.is_zero() && drain.timeout < Duration::from_secs(1) {
        warnings.push(format!(
            "drain.timeout is {} ns ({:?}), under one second: drains will almost always time out (did you mean seconds? the value is in nanoseconds)",
            drain.timeout.as_nanos(),
            drain.timeout
        ));
    }
    let profiling = enable_flag("profiling", data.get("profiling"), false)?;
    let workloads = enable_flag("feature.workloads", data.get("feature.workloads"), true)?;
    for key in data.keys() {
        if !matches!(key.as_str(), "drain" | "profiling" | "feature.workloads") {
            warnings.push(format!(
                "unknown key {key:?} in the drain policy ConfigMap ignored"
            ));
        }
    }
    Ok((
        AgentConfig {
            drain,
            profiling,
            workloads,
        },
        warnings,
    ))
}

/// How many nodes may patch at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConcurrency {
    Count(u32),
    Percent(u32),
}

impl MaxConcurrency {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let t = text.trim();
        let bad = || {
            perr(
                "maxConcurrency",
                format!("{text:?} is not a positive number or a percentage like \"10%\""),
            )
        };
        if let Some(p) = t.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(bad());
            }
            Ok(Self::Percent(p))
        } else {
            let n: u32 = t.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            Ok(Self::Count(n))
        }
    }

    /// Slots for a cluster of `nodes` nodes: at least one.
    pub fn slots(&self, nodes: usize) -> u32 {
        match *self {
            Self::Count(n) => n,
            Self::Percent(p) => ((nodes as u64 * p as u64) / 100).max(1) as u32,
        }
    }
}

/// A maintenance window: runs start only inside one. `end` before `start` wraps past midnight
/// (the window belongs to the day it starts on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    pub days: Vec<Weekday>,
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub time_zone: Tz,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawWindow {
    #[serde(default)]
    days: Vec<String>,
    start: String,
    end: String,
    #[serde(default)]
    time_zone: Option<String>,
}

fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.trim().to_ascii_lowercase().get(..3)? {
        "sun" => Weekday::Sun,
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        _ => return None,
    })
}

fn parse_tz(key: &str, s: &str) -> Result<Tz, PolicyError> {
    s.trim().parse::<Tz>().map_err(|_| {
        perr(
            key,
            format!("{s:?} is not a time zone name (e.g. \"Europe/Berlin\", \"UTC\")"),
        )
    })
}

fn parse_hhmm(key: &str, s: &str) -> Result<NaiveTime, PolicyError> {
    NaiveTime::parse_from_str(s.trim(), "%H:%M")
        .map_err(|_| perr(key, format!("{s:?} is not a time of day HH:MM")))
}

impl MaintenanceWindow {
    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.time_zone);
        let t = local.time();
        let day_ok = |d: Weekday| self.days.is_empty() || self.days.contains(&d);
        if self.start < self.end {
            day_ok(local.weekday()) && t >= self.start && t < self.end
        } else {
            // Wraps: the evening part belongs to today, the morning part to yesterday. A
            // window whose end is its start is 24 hours from its start on each listed day.
            (t >= self.start && day_ok(local.weekday()))
                || (t < self.end && day_ok(local.weekday().pred()))
        }
    }
}

/// The patch policy ConfigMap.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPolicy {
    pub schedule: Option<(String, crate::schedule::Schedule)>,
    pub time_zone: Tz,
    pub reboot_if_required: bool,
    pub on_demand_patch_after: Option<DateTime<Utc>>,
    pub max_concurrency: MaxConcurrency,
    pub maintenance_windows: Vec<MaintenanceWindow>,
    pub paused: bool,
    /// An imported cluster: in-place patching is not offered (reference page limitation).
    pub imported_cluster: bool,
}

impl Default for PatchPolicy {
    fn default() -> Self {
        Self {
            schedule: None,
            time_zone: Tz::UTC,
            reboot_if_required: true,
            on_demand_patch_after: None,
            max_concurrency: MaxConcurrency::Count(1),
            maintenance_windows: Vec::new(),
            paused: false,
            imported_cluster: false,
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, PolicyError> {
    match v.trim() {
        "true" | "True" | "yes" => Ok(true),
        "false" | "False" | "no" => Ok(false),
        // An empty value is not "false": a key given without its value is a mistake to report.
        _ => Err(perr(key, format!("{v:?} is not true or false"))),
    }
}

/// Parses the patch policy ConfigMap's data strictly (unknown keys are errors: a typo must not
/// silently leave patching on defaults).
pub fn parse_patch_policy(data: &BTreeMap<String, String>) -> Result<PatchPolicy, PolicyError> {
    let mut p = PatchPolicy::default();
    for (key, value) in data {
        let v = value.trim();
        match key.as_str() {
            "schedule" if v.is_empty() => p.schedule = None,
            "schedule" => {
                let s = crate::schedule::Schedule::parse(v)
                    .map_err(|e| perr("schedule", format!("{v:?}: {e}")))?;
                p.schedule = Some((v.to_string(), s));
            }
            "timeZone" => p.time_zone = parse_tz("timeZone", v)?,
            "rebootIfRequired" => p.reboot_if_required = parse_bool(key, v)?,
            "onDemandPatchAfter" if v.is_empty() => p.on_demand_patch_after = None,
            "onDemandPatchAfter" => {
                let t = DateTime::parse_from_rfc3339(v).map_err(|_| {
                    perr(
                        key,
                        format!("{v:?} is not an RFC 3339 time (2026-11-24T20:00:00Z)"),
                    )
                })?;
                p.on_demand_patch_after = Some(t.with_timezone(&Utc));
            }
            "maxConcurrency" => p.max_concurrency = MaxConcurrency::parse(v)?,
            "maintenanceWindows" if v.is_empty() => p.maintenance_windows.clear(),
            "maintenanceWindows" => {
                let raw: Vec<RawWindow> =
                    serde_json::from_str(v).map_err(|e| perr(key, format!("{e} in {v:?}")))?;
                p.maintenance_windows = raw
                    .into_iter()
                    .map(|w| {
                        let days = w
                            .days
                            .iter()
                            .map(|d| {
                                parse_weekday(d).ok_or_else(|| {
                                    perr(key, format!("day {d:?} is not a weekday name"))
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(MaintenanceWindow {
                            days,
                            start: parse_hhmm(key, &w.start)?,
                            end: parse_hhmm(key, &w.end)?,
                            time_zone: match &w.time_zone {
                                Some(z) => parse_tz(key, z)?,
                                None => Tz::UTC,
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, PolicyError>>()?;
            }
            "paused" => p.paused = parse_bool(key, v)?,
            "importedCluster" => p.imported_cluster = parse_bool(key, v)?,
            // The reference page's patch-on-boot setting belongs to the image's first boot
            // (bootpatch's own config); accepted here so one settings block can be shared.
            "patchOnBoot" => {
                parse_bool(key, v)?;
            }
            other => return Err(perr(other, "unknown key in the patch policy ConfigMap")),
        }
    }
    Ok(p)
}

impl PatchPolicy {
    /// The first scheduled occurrence strictly after `after`, in UTC (Vixie cron's meaning in
    /// the policy's time zone, see `schedule`).
    pub fn next_occurrence(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (_, s) = self.schedule.as_ref()?;
        s.next_after(after, self.time_zone)
    }

    /// Whether a run may start at `at` (no windows = always).
    pub fn in_window(&self, at: DateTime<Utc>) -> bool {
        self.maintenance_windows.is_empty()
            || self.maintenance_windows.iter().any(|w| w.contains(at))
    }
}

/// Why a node is due for a run, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Due now, for this reason (`scheduled`, `on-demand`).
    Now(&'static str),
    /// Due at this time (the next schedule occurrence) or never.
    Later(Option<DateTime<Utc>>),
}

/// Inputs from the node's record that decide whether it is due.
#[derive(Debug, Clone, Default)]
pub struct NodeRecord {
    pub last_applied_patch_time: Option<DateTime<Utc>>,
    pub last_run_start: Option<DateTime<Utc>>,
    pub patch_requested: Option<DateTime<Utc>>,
    /// Whether a run started from the request as it stands now (`request-served`); `None`
    /// when no run recorded one (an older agent), where the times are compared instead.
    pub request_served: Option<bool>,
}

/// Decides whether a node is due: an on-demand request (a node annotation no run has started
/// from, or, on a node without that mark, one newer than its last run; or
/// `onDemandPatchAfter` newer than its last patch and its last run), or a schedule
/// occurrence since its last patch and last run. Windows and pause are the caller's.
pub fn due(policy: &PatchPolicy, rec: &NodeRecord, now: DateTime<Utc>) -> Due {
    let last_run = rec.last_run_start;
    // Requests and cut-offs still in the future (a client clock ahead, on a node without the
    // served mark; a cut-off set for later) are times to wake at, like the next schedule
    // occurrence.
    let mut wake: Vec<DateTime<Utc>> = Vec::new();
    if let Some(req) = rec.patch_requested {
        if rec.request_served == Some(false) {
            // A request no run has started from: now, whatever the client's clock said.
            return Due::Now("on-demand");
        }
        if rec.request_served.is_none() && last_run.is_none_or(|r| r < req) {
            if req <= now {
                return Due::Now("on-demand");
            }
            wake.push(req);
        }
    }
    if let Some(after) = policy.on_demand_patch_after {
        let stale = rec.last_applied_patch_time.is_none_or(|t| t < after);
        if stale && last_run.is_none_or(|r| r < after) {
            if after <= now {
                return Due::Now("on-demand");
            }
            wake.push(after);
        }
    }
    let base = [rec.last_applied_patch_time, last_run]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(now - chrono::Duration::seconds(1));
    match policy.next_occurrence(base) {
        Some(t) if t <= now => Due::Now("scheduled"),
        other => Due::Later(wake.into_iter().chain(other).min()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn reference_page_example_parses_and_warns_about_the_tiny_timeout() {
        let d = data(&[
            ("profiling", "disable"),
            ("feature.workloads", "enable"),
            (
                "drain",
                r#"{
          "timeout": 600000000,
          "gracePeriod": 600,
          "deleteLocalData": true,
          "ignoreDaemonSets": true,
          "force": true,
          "disableEviction": false,
          "skipWaitForDeleteTimeout": 600
       }"#,
            ),
        ]);
        let (c, w) = parse_agent_config(&d).unwrap();
        assert_eq!(c.drain.timeout, Duration::from_millis(600));
        assert_eq!(c.drain.grace_period, 600);
        assert!(c.drain.delete_local_data && c.drain.ignore_daemon_sets && c.drain.force);
        assert!(!c.drain.disable_eviction);
        assert_eq!(c.drain.skip_wait_for_delete_timeout, 600);
        assert!(!c.profiling && c.workloads);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("under one second"), "{w:?}");
    }

    #[test]
    fn defaults_are_the_reference_pages() {
        let (c, w) = parse_agent_config(&BTreeMap::new()).unwrap();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.drain.grace_period, -1);
        assert_eq!(c.drain.timeout, Duration::ZERO);
        assert!(!c.profiling && c.workloads && w.is_empty());
    }

    #[test]
    fn timeout_as_duration_string() {
        for (text, want) in [
            ("\"600s\"", Duration::from_secs(600)),
            ("\"10m\"", Duration::from_secs(600)),
            ("\"1h30m\"", Duration::from_secs(5400)),
            ("\"1.5s\"", Duration::from_millis(1500)),
            ("\"250ms\"", Duration::from_millis(250)),
            ("\"0\"", Duration::ZERO),
            ("0", Duration::ZERO),
        ] {
            let d = data(&[("drain", &format!("{{\"timeout\": {text}}}"))]);
            assert_eq!(
                parse_agent_config(&d).unwrap().0.drain.timeout,
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_drain_policies_name_the_problem() {
        for (drain, needle) in [
            ("{\"timeout\": -5}", "negative"),
            ("{\"timeout\": \"ten\"}", "ten"),
            ("{\"timeout\": \"10x\"}", "unit"),
            ("{\"gracePeriod\": \"x\"}", "gracePeriod"),
            ("{\"deleteLocalData\": \"yes\"}", "deleteLocalData"),
            ("{\"forse\": true}", "forse"),
            ("{not json", "drain"),
        ] {
            let e = parse_agent_config(&data(&[("drain", drain)])).unwrap_err();
            assert_eq!(e.key, "drain");
            assert!(
                e.to_string().contains(needle) || e.key.contains(needle),
                "{drain}: {e}"
            );
        }
        let e = parse_agent_config(&data(&[("profiling", "on")])).unwrap_err();
        assert_eq!(e.key, "profiling");
        let e = parse_agent_config(&data(&[("feature.workloads", "yes")])).unwrap_err();
        assert_eq!(e.key, "feature.workloads");
    }

    #[test]
    fn max_concurrency_number_or_percent() {
        assert_eq!(MaxConcurrency::parse("3").unwrap().slots(100), 3);
        assert_eq!(MaxConcurrency::parse("10%").unwrap().slots(1000), 100);
        assert_eq!(MaxConcurrency::parse("10%").unwrap().slots(3), 1);
        assert_eq!(MaxConcurrency::parse("25%").unwrap().slots(20), 5);
        for bad in ["0", "-1", "0%", "101%", "x", "1.5"] {
            assert!(MaxConcurrency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patch_policy_parses_strictly() {
        let p = parse_patch_policy(&data(&[
            ("schedule", "0 2 * * 6"),
            ("timeZone", "Europe/Berlin"),
            ("rebootIfRequired", "false"),
            ("onDemandPatchAfter", "2026-11-24T20:00:00Z"),
            ("maxConcurrency", "10%"),
            (
                "maintenanceWindows",
                r#"[{"days":["sat","sun"],"start":"22:00","end":"04:00","timeZone":"Europe/Berlin"}]"#,
            ),
            ("paused", "true"),
        ]))
        .unwrap();
        assert_eq!(p.schedule.as_ref().unwrap().0, "0 2 * * 6");
        assert!(!p.reboot_if_required && p.paused);
        assert_eq!(p.max_concurrency, MaxConcurrency::Percent(10));
        assert_eq!(p.on_demand_patch_after, Some(t("2026-11-24T20:00:00Z")));
        for (k, v) in [
            ("schedule", "61 * * * *"),
            ("schedule", "0 0 L * *"),
            ("timeZone", "Mars/Olympus"),
            ("onDemandPatchAfter", "yesterday"),
            ("maxConcurrency", "ten"),
            (
                "maintenanceWindows",
                r#"[{"days":["funday"],"start":"1:00","end":"2:00"}]"#,
            ),
            ("maintenanceWindows", r#"[{"start":"25:00","end":"02:00"}]"#),
            ("sched", "* * * * *"),
            ("rebootIfRequired", ""),
            ("rebootIfRequired", "  "),
            ("paused", ""),
            ("importedCluster", "maybe"),
        ] {
            let e = parse_patch_policy(&data(&[(k, v)])).unwrap_err();
            assert_eq!(e.key, k, "{k}={v}: {e}");
        }
        // A bad schedule names the key, the value and the field.
        let e = parse_patch_policy(&data(&[("schedule", "61 * * * *")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"schedule: "61 * * * *": minute field "61": 61 is outside 0-59"#
        );
        // An empty boolean is an error naming the key and showing the value, not a silent false.
        let e = parse_patch_policy(&data(&[("rebootIfRequired", "")])).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("rebootIfRequired") && m.contains(r#""""#), "{m}");
    }

    #[test]
    fn a_window_whose_start_is_its_end_is_the_whole_day() {
        let w = MaintenanceWindow {
            days: vec![Weekday::Sat],
            start: NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
            time_zone: Tz::UTC,
        };
        // 2026-11-28 is a Saturday.
        for at in [
            "2026-11-28T00:00:00Z",
            "2026-11-28T12:00:00Z",
            "2026-11-28T23:59:59Z",
        ] {
            assert!(w.contains(t(at)), "{at}");
        }
        assert!(!w.contains(t("2026-11-29T00:00:00Z")));
        assert!(!w.contains(t("2026-11-27T23:59:59Z")));
        let any_day = MaintenanceWindow {
            days: vec![],
            start: NaiveTime::from_hms_opt(3, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(3, 0, 0).unwrap(),
            time_zone: Tz::UTC,
        };
        assert!(any_day.contains(t("2026-11-24T02:59:00Z")));
        assert!(any_day.contains(t("2026-11-24T03:00:00Z")));
    }

    #[test]
    fn windows_wrap_past_midnight_and_honour_days_and_zones() {
        let w = MaintenanceWindow {
            days: vec![Weekday::Sat],
            start: NaiveTime::from_hms_opt(22, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(4, 0, 0).unwrap(),
            time_zone: "Europe/Berlin".parse().unwrap(),
        };
        // 2026-11-28 is a Saturday; Berlin is UTC+1 in November.
        assert!(w.contains(t("2026-11-28T21:30:00Z"))); // Sat 22:30 local
        assert!(w.contains(t("2026-11-29T02:59:00Z"))); // Sun 03:59 local, from Saturday
        assert!(!w.contains(t("2026-11-29T03:00:00Z"))); // Sun 04:00 local
        assert!(!w.contains(t("2026-11-28T20:59:00Z"))); // Sat 21:59 local
        assert!(!w.contains(t("2026-11-29T21:30:00Z"))); // Sun 22:30 local
        assert!(!w.contains(t("2026-11-28T02:00:00Z"))); // Sat 03:00 local, from Friday
        let day = MaintenanceWindow {
            days: vec![],
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            end: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            time_zone: Tz::UTC,
        };
        assert!(day.contains(t("2026-11-24T09:00:00Z")));
        assert!(!day.contains(t("2026-11-24T17:00:00Z")));
    }

    #[test]
    fn schedule_in_a_time_zone() {
        let p = parse_patch_policy(&data(&[
            ("schedule", "0 2 * * *"),
            ("timeZone", "America/New_York"),
        ]))
        .unwrap();
        // 02:00 in New York (UTC-5 in November) is 07:00 UTC.
        assert_eq!(
            p.next_occurrence(t("2026-11-24T12:00:00Z")),
            Some(t("2026-11-25T07:00:00Z"))
        );
        // DST starts 2026-03-08 in New York: 02:00 does not exist; the first valid time after.
        assert_eq!(
            p.next_occurrence(t("2026-03-07T12:00:00Z")),
            Some(t("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn schedule_days_as_vixie_cron_in_the_policy_zone() {
        // `*/2` is unrestricted: odd days that are Mondays, at midnight in Berlin (UTC+1).
        let p = parse_patch_policy(&data(&[
            ("schedule", "0 0 */2 * 1"),
            ("timeZone", "Europe/Berlin"),
        ]))
        .unwrap();
        assert_eq!(
            p.next_occurrence(t("2026-12-01T12:00:00Z")),
            Some(t("2026-12-06T23:00:00Z"))
        );
    }

    #[test]
    fn due_on_schedule_on_demand_and_once() {
        let p = parse_patch_policy(&data(&[("schedule", "0 2 * * *")])).unwrap();
        let mut rec = NodeRecord {
            last_applied_patch_time: Some(t("2026-11-23T03:00:00Z")),
            ..Default::default()
        };
        assert_eq!(
            due(&p, &rec, t("2026-11-24T01:00:00Z")),
            Due::Later(Some(t("2026-11-24T02:00:00Z")))
        );
        assert_eq!(
            due(&p, &rec, t("2026-11-24T02:00:30Z")),
            Due::Now("scheduled")
        );
        rec.last_run_start = Some(t("2026-11-24T02:00:31Z"));
        assert!(matches!(
            due(&p, &rec, t("2026-11-24T02:10:00Z")),
            Due::Later(_)
        ));
        rec.patch_requested = Some(t("2026-11-24T03:00:00Z"));
        assert_eq!(
            due(&p, &rec, t("2026-11-24T03:00:01Z")),
            Due::Now("on-demand")
        );
        rec.last_run_start = Some(t("2026-11-24T03:00:02Z"));
        assert!(matches!(
            due(&p, &rec, t("2026-11-24T03:10:00Z")),
            Due::Later(_)
        ));

        let mut p2 = PatchPolicy {
            on_demand_patch_after: Some(t("2026-11-24T04:00:00Z")),
            ..Default::default()
        };
        assert_eq!(
            due(&p2, &rec, t("2026-11-24T04:00:01Z")),
            Due::Now("on-demand")
        );
        rec.last_run_start = Some(t("2026-11-24T04:00:02Z"));
        assert_eq!(due(&p2, &rec, t("2026-11-24T04:10:00Z")), Due::Later(None));
        // A node patched after the cut-off is not due.
        p2.on_demand_patch_after = Some(t("2026-11-23T00:00:00Z"));
        let fresh = NodeRecord {
            last_applied_patch_time: Some(t("2026-11-23T03:00:00Z")),
            ..Default::default()
        };
        assert_eq!(
            due(&p2, &fresh, t("2026-11-24T04:10:00Z")),
            Due::Later(None)
        );
    }

    #[test]
    fn a_future_request_or_cut_off_is_a_time_to_wake_at() {
        // onDemandPatchAfter in the future, no schedule: due then, not "later, no time".
        let p = PatchPolicy {
            on_demand_patch_after: Some(t("2026-11-24T05:00:00Z")),
            ..Default::default()
        };
        let rec = NodeRecord {
            last_applied_patch_time: Some(t("2026-11-23T03:00:00Z")),
            ..Default::default()
        };
        let now = t("2026-11-24T04:00:00Z");
        assert_eq!(
            due(&p, &rec, now),
            Due::Later(Some(t("2026-11-24T05:00:00Z")))
        );
        // A request stamped by a client whose clock runs ahead, with a schedule further off.
        let p = parse_patch_policy(&data(&[("schedule", "0 2 * * *")])).unwrap();
        let rec = NodeRecord {
            last_applied_patch_time: Some(t("2026-11-24T03:00:00Z")),
            patch_requested: Some(t("2026-11-24T04:00:30Z")),
            ..Default::default()
        };
        assert_eq!(
            due(&p, &rec, now),
            Due::Later(Some(t("2026-11-24T04:00:30Z")))
        );
        // The earliest of them, whichever it is.
        let rec = NodeRecord {
            patch_requested: Some(t("2026-11-26T00:00:00Z")),
            ..rec
        };
        assert_eq!(
            due(&p, &rec, now),
            Due::Later(Some(t("2026-11-25T02:00:00Z")))
        );
    }
}
