//! What a package manager backend offers the patch engine, and the pieces
//! apt and dnf share: the plan of a run and the classification of failures
//! into "try again later" and "stop now".

use crate::cmd;
use crate::error::{Error, Result};
use crate::state::PackageChange;
use std::process::Command;

/// What an upgrade within the stream would change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<PackageChange>,
    /// Upgradable packages the package manager holds back (they would need a
    /// removal or are held); reported, never forced.
    pub kept_back: Vec<String>,
}

/// Why a network-facing step failed.
#[derive(Debug)]
pub enum Failure {
    /// The sources could not be reached: worth retrying until the deadline.
    Unreachable(String),
    /// Anything that retrying will not fix (bad signature, broken package).
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

pub trait Backend {
    /// Finishes an interrupted package operation (after [`Backend::refresh`],
    /// since a reinstall may need to download). Returns what it did, if
    /// anything.
    fn repair(&mut self) -> Result<Option<String>, Failure>;
    /// Refreshes package metadata from the sources.
    fn refresh(&mut self) -> Result<(), Failure>;
    /// Works out what an upgrade within the stream would change.
    fn plan(&mut self) -> Result<Plan>;
    /// Downloads everything the upgrade needs (network; may be retried).
    fn download(&mut self) -> Result<(), Failure>;
    /// Installs the downloaded upgrade (no network).
    fn install(&mut self) -> Result<()>;
    /// The packages that require a reboot, or None when none is required.
    fn reboot_required(&mut self) -> Result<Option<Vec<String>>>;
}

/// Runs a package manager command; a failure is sorted by `classify` into
/// unreachable (retry) or fatal, and otherwise reported with the command
/// line and the end of its output.
pub fn run_classified(
    step: &str,
    mut c: Command,
    classify: fn(&str) -> Result<(), Failure>,
) -> Result<cmd::Output, Failure> {
    let out = cmd::run(&mut c)?;
    if out.success() {
        return Ok(out);
    }
    classify(&out.combined())?;
    Err(Failure::Fatal(Error::Package {
        step: step.into(),
        command: cmd::display(&c),
        detail: cmd::tail(&out.combined(), 15),
    }))
}

/// Sorts a failed command's output by the phrases its tool uses: a
/// verification phrase is fatal, an unreachable one worth retrying, and
/// anything else is left to the caller. `detail` picks what to report.
pub fn classify_by(
    output: &str,
    verify: &[&str],
    unreachable: &[&str],
    detail: impl Fn() -> String,
) -> Result<(), Failure> {
    if verify.iter().any(|p| output.contains(p)) {
        return Err(Failure::Fatal(Error::Verification { detail: detail() }));
    }
    if unreachable.iter().any(|p| output.contains(p)) {
        return Err(Failure::Unreachable(detail()));
    }
    Ok(())
}
