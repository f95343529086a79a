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

    type Transition = fn(Step) -> Result<Step, TransitionError>;

    #[test]
    fn every_transition_checks_where_it_starts() {
        let table: [(&str, Transition, &[Step]); 10] = [
            ("take_slot", Step::take_slot, &[Step::Idle]),
            ("cordon", Step::cordon, &[Step::SlotHeld]),
            ("drained", Step::drained, &[Step::Cordoned]),
            ("patch", Step::patch, &[Step::Drained]),
            ("reboot", Step::reboot, &[Step::Patching]),
            (
                "uncordon",
                Step::uncordon,
                &[Step::Patching, Step::Rebooting],
            ),
            ("release", Step::release, &[Step::Uncordoned]),
            (
                "abort",
                Step::abort,
                &[Step::SlotHeld, Step::Cordoned, Step::Drained],
            ),
            (
                "abandon",
                Step::abandon,
                &[
                    Step::SlotHeld,
                    Step::Cordoned,
                    Step::Drained,
                    Step::Patching,
                    Step::Rebooting,
                    Step::Uncordoned,
                ],
            ),
            ("reset", Step::reset, &[Step::Failed]),
        ];
        for (name, t, from) in table {
            for s in ALL_STEPS {
                assert_eq!(t(s).is_ok(), from.contains(&s), "{name} from {s}");
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
