//! The patch cycle as an explicit state machine: idle → slot held → cordoned → drained →
//! patching → (rebooting →) uncordoned → idle, with the two ways out of the middle (abort: a
//! drain that failed goes back to idle after cleanup; abandon: a node whose slot was taken over
//! is failed and left for a human). Each method checks the state it starts from; the agent
//! records every step on the Node so a restarted agent resumes from it. No I/O here.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Idle,
    SlotHeld,
    Cordoned,
    Drained,
    Patching,
    Rebooting,
    Uncordoned,
    Failed,
}

pub const ALL_STEPS: [Step; 8] = [
    Step::Idle,
    Step::SlotHeld,
    Step::Cordoned,
    Step::Drained,
    Step::Patching,
    Step::Rebooting,
    Step::Uncordoned,
    Step::Failed,
];

/// A transition asked of a state it does not start from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {transition} from step {from}")]
pub struct TransitionError {
    pub from: Step,
    pub transition: &'static str,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Idle => "idle",
            Step::SlotHeld => "slot-held",
            Step::Cordoned => "cordoned",
            Step::Drained => "drained",
            Step::Patching => "patching",
            Step::Rebooting => "rebooting",
            Step::Uncordoned => "uncordoned",
            Step::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Step> {
        ALL_STEPS.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the node is in the middle of a run (holds, or should hold, a slot).
    pub fn in_run(self) -> bool {
        !matches!(self, Step::Idle | Step::Failed)
    }

    fn go(self, ok: bool, transition: &'static str, to: Step) -> Result<Step, TransitionError> {
        if ok {
            Ok(to)
        } else {
            Err(TransitionError {
                from: self,
                transition,
            })
        }
    }

    pub fn take_slot(self) -> Result<Step, TransitionError> {
        self.go(self == Step::Idle, "take a slot", Step::SlotHeld)
    }

    pub fn cordon(self) -> Result<Step, TransitionError> {
        self.go(self == Step::SlotHeld, "cordon", Step::Cordoned)
    }

    pub fn drained(self) -> Result<Step, TransitionError> {
        self.go(self == Step::Cordoned, "finish draining", Step::Drained)
    }

    pub fn patch(self) -> Result<Step, TransitionError> {
        self.go(self == Step::Drained, "start patching", Step::Patching)
    }

    pub fn reboot(self) -> Result<Step, TransitionError> {
        self.go(self == Step::Patching, "reboot", Step::Rebooting)
    }

    pub fn uncordon(self) -> Result<Step, TransitionError> {
        self.go(
            matches!(self, Step::Patching | Step::Rebooting),
            "uncordon",
            Step::Uncordoned,
        )
    }

    pub fn release(self) -> Result<Step, TransitionError> {
        self.go(self == Step::Uncordoned, "release the slot", Step::Idle)
    }

    /// A run that failed before patching (drain refused or timed out): back to idle after
    /// uncordoning (if the agent cordoned) and releasing the slot.
    pub fn abort(self) -> Result<Step, TransitionError> {
        self.go(
            matches!(self, Step::SlotHeld | Step::Cordoned | Step::Drained),
            "abort",
            Step::Idle,
        )
    }

    /// The slot was taken over (this node's agent was gone too long): left as it is, for a human.
    pub fn abandon(self) -> Result<Step, TransitionError> {
        self.go(self.in_run(), "abandon", Step::Failed)
    }

    /// A human cleared a failed node (`kubectl ospatch now NODE`).
    pub fn reset(self) -> Result<Step, TransitionError> {
        self.go(self == Step::Failed, "reset", Step::Idle)
    }
}

/// A transition of the machine: the step it leads to, or why it cannot be taken from here.
pub type Transition = fn(Step) -> Result<Step, TransitionError>;

/// Every transition, by name. What is allowed is what these functions allow: nothing else
/// lists the edges.
pub const TRANSITIONS: [(&str, Transition); 10] = [
    ("take_slot", Step::take_slot),
    ("cordon", Step::cordon),
    ("drained", Step::drained),
    ("patch", Step::patch),
    ("reboot", Step::reboot),
    ("uncordon", Step::uncordon),
    ("release", Step::release),
    ("abort", Step::abort),
    ("abandon", Step::abandon),
    ("reset", Step::reset),
];

impl Step {
    /// The steps one transition leads to from this one.
    pub fn successors(self) -> Vec<Step> {
        let mut out: Vec<Step> = TRANSITIONS
            .iter()
            .filter_map(|(_, t)| t(self).ok())
            .collect();
        out.dedup();
        out
    }

    /// Whether a node may go from this step to `to` in one recorded change: by a transition,
    /// or by staying where it is (a step recorded again, as a resumed run does).
    pub fn allows(self, to: Step) -> bool {
        self == to || self.successors().contains(&to)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_with_and_without_a_reboot() {
        let s = Step::Idle.take_slot().unwrap();
        let s = s.cordon().unwrap().drained().unwrap().patch().unwrap();
        assert_eq!(s, Step::Patching);
        let with_reboot = s.reboot().unwrap().uncordon().unwrap().release().unwrap();
        assert_eq!(with_reboot, Step::Idle);
        assert_eq!(s.uncordon().unwrap().release().unwrap(), Step::Idle);
    }

    /// Every step reachable from `from` by any number of transitions.
    fn reachable(from: Step) -> Vec<Step> {
        reachable_avoiding(from, None)
    }

    /// Every step reachable from `from` without passing through `avoid`.
    fn reachable_avoiding(from: Step, avoid: Option<Step>) -> Vec<Step> {
        let mut seen = vec![from];
        let mut i = 0;
        while i < seen.len() {
            for s in seen[i].successors() {
                if Some(s) != avoid && !seen.contains(&s) {
                    seen.push(s);
                }
            }
            i += 1;
        }
        seen
    }

    // What follows asserts properties of the machine the agent relies on, from its own
    // transitions: no list of edges is repeated here.

    #[test]
    fn every_step_is_reached_from_idle_and_every_run_can_end() {
        let from_idle = reachable(Step::Idle);
        for s in ALL_STEPS {
            assert!(from_idle.contains(&s), "{s} cannot be reached from idle");
            let back = reachable(s);
            assert!(back.contains(&Step::Idle), "no way back to idle from {s}");
        }
    }

    #[test]
    fn nothing_is_done_to_a_node_without_a_slot_and_a_cordon() {
        // Without the slot, no cordon; without the cordon, no drain, patch or reboot.
        let no_slot = reachable_avoiding(Step::Idle, Some(Step::SlotHeld));
        assert!(no_slot.iter().all(|s| !s.in_run()), "{no_slot:?}");
        let no_cordon = reachable_avoiding(Step::SlotHeld, Some(Step::Cordoned));
        for s in [Step::Drained, Step::Patching, Step::Rebooting] {
            assert!(!no_cordon.contains(&s), "{s} reached without cordoning");
        }
        // A reboot only after patching.
        let no_patch = reachable_avoiding(Step::Idle, Some(Step::Patching));
        assert!(!no_patch.contains(&Step::Rebooting));
    }

    #[test]
    fn a_failed_node_waits_for_a_human_and_a_patched_one_is_not_aborted() {
        // Failed: only the reset (a human's `kubectl ospatch now NODE`) leaves it.
        assert_eq!(Step::Failed.successors(), vec![Step::Idle]);
        assert_eq!(Step::Failed.reset(), Ok(Step::Idle));
        // Once patching has started, a run ends by uncordoning (or for a human), never by the
        // abort that skips the uncordon bookkeeping.
        for s in [Step::Patching, Step::Rebooting, Step::Uncordoned] {
            assert!(s.abort().is_err(), "abort from {s}");
        }
        // The idle node is never failed by a transition: nothing was done to it.
        assert!(!Step::Idle.allows(Step::Failed));
    }

    #[test]
    fn allows_is_what_the_transitions_do() {
        for from in ALL_STEPS {
            for to in ALL_STEPS {
                let by_a_transition = TRANSITIONS.iter().any(|(_, t)| t(from) == Ok(to));
                assert_eq!(
                    from.allows(to),
                    from == to || by_a_transition,
                    "{from} -> {to}"
                );
            }
        }
        let e = Step::Idle.cordon().unwrap_err();
        assert_eq!(e.to_string(), "cannot cordon from step idle");
    }

    #[test]
    fn names_round_trip() {
        for s in ALL_STEPS {
            assert_eq!(Step::parse(s.as_str()), Some(s));
        }
        assert_eq!(Step::parse("nonsense"), None);
    }
}
