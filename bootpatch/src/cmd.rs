//! Running external commands: one place that starts a process, collects its
//! output and, on failure, puts the whole command line and its stderr in the
//! error. Output parsing lives with each backend, apart from running.

use crate::error::{Error, Result};
use std::process::{Command, Stdio};

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// stdout and stderr together, for classifying apt's messages.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The command line as a user would type it, for error messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command with stdin closed (a prompt gets end-of-file, never a
/// hang) and returns its output, whatever its exit status.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("starting `{}`", display(cmd)), e))?;
    Ok(Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The last lines of a command's output: enough to say why it failed
/// without flooding the journal.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command and turns a non-zero exit into [`Error::Package`].
pub fn run_ok(step: &str, cmd: &mut Command) -> Result<Output> {
    let out = run(cmd)?;
    if !out.success() {
        let status = match out.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        };
        return Err(Error::Package {
            step: step.into(),
            command: display(cmd),
            detail: format!("{status}: {}", tail(&out.combined(), 15)),
        });
    }
    Ok(out)
}
