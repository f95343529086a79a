//! The errors a patch run can end with. Each has a stable label (for the
//! state file, the updater's metrics and logs) and a documented exit code.

use crate::config::ConfigError;
use std::fmt;

/// Exit codes of the `bootpatch` binary; the README and `--help` list them.
pub mod exit {
    pub const OK: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const CONFIG: i32 = 3;
    pub const LOCK_TIMEOUT: i32 = 4;
    pub const MIRROR_UNREACHABLE: i32 = 5;
    pub const VERIFICATION: i32 = 6;
    pub const PACKAGE: i32 = 7;
    pub const UNSUPPORTED: i32 = 8;
    pub const STATE: i32 = 9;
    /// `check`: patches are available (as `dnf check-update`).
    pub const PATCHES_AVAILABLE: i32 = 100;

    /// The stable label of an exit code: the `kind` of the error that exits with it (the
    /// state file's `error.kind`, the updater's `last-result` and metrics).
    pub fn label(code: i32) -> &'static str {
        match code {
            OK => "ok",
            INTERNAL => "io",
            USAGE => "usage",
            CONFIG => "config",
            LOCK_TIMEOUT => "lock-timeout",
            MIRROR_UNREACHABLE => "mirror-unreachable",
            VERIFICATION => "verification",
            PACKAGE => "package",
            UNSUPPORTED => "unsupported",
            STATE => "state",
            PATCHES_AVAILABLE => "patches-available",
            _ => "failed",
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Usage(String),
    Config(ConfigError),
    /// The dpkg/apt lock stayed held past the configured timeout.
    LockTimeout {
        lock: String,
        holder: Option<String>,
        waited_secs: u64,
    },
    /// The package sources could not be reached before the retry deadline.
    MirrorUnreachable {
        detail: String,
        waited_secs: u64,
    },
    /// A signature or checksum did not verify: nothing was installed.
    Verification {
        detail: String,
    },
    /// A package manager command failed.
    Package {
        step: String,
        command: String,
        detail: String,
    },
    /// This OS or stream is not handled, or the run would leave the stream.
    Unsupported(String),
    /// The state file could not be read or written.
    State {
        path: String,
        detail: String,
    },
    /// Anything else: a file we could not read, a command we could not start.
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    /// Stable label, for the state file and for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage",
            Error::Config(_) => "config",
            Error::LockTimeout { .. } => "lock-timeout",
            Error::MirrorUnreachable { .. } => "mirror-unreachable",
            Error::Verification { .. } => "verification",
            Error::Package { .. } => "package",
            Error::Unsupported(_) => "unsupported",
            Error::State { .. } => "state",
            Error::Io { .. } => "io",
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Config(_) => exit::CONFIG,
            Error::LockTimeout { .. } => exit::LOCK_TIMEOUT,
            Error::MirrorUnreachable { .. } => exit::MIRROR_UNREACHABLE,
            Error::Verification { .. } => exit::VERIFICATION,
            Error::Package { .. } => exit::PACKAGE,
            Error::Unsupported(_) => exit::UNSUPPORTED,
            Error::State { .. } => exit::STATE,
            Error::Io { .. } => exit::INTERNAL,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}"),
            Error::Config(e) => write!(f, "invalid config: {e}"),
            Error::LockTimeout {
                lock,
                holder,
                waited_secs,
            } => {
                write!(f, "gave up after {waited_secs}s waiting for {lock}")?;
                if let Some(h) = holder {
                    write!(f, " (held by {h})")?;
                }
                Ok(())
            }
            Error::MirrorUnreachable {
                detail,
                waited_secs,
            } => {
                write!(f, "package sources unreachable for {waited_secs}s (retry deadline reached): {detail}")
            }
            Error::Verification { detail } => {
                write!(
                    f,
                    "signature or checksum verification failed, nothing installed: {detail}"
                )
            }
            Error::Package {
                step,
                command,
                detail,
            } => write!(f, "{step} failed: `{command}`: {detail}"),
            Error::Unsupported(m) => write!(f, "{m}"),
            Error::State { path, detail } => write!(f, "state file {path}: {detail}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
