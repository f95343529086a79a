//! External commands, run one way: the whole command line and its stderr go
//! into the error when it fails, so a failed build step names what broke.
//! Output parsing lives with the callers, as pure functions.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

/// The command line as a user could paste it into a shell.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![quote(&cmd.get_program().to_string_lossy())];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Keeps the end of a long stderr: the cause of a failure is at the end.
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn failure(cmd: &Command, status: std::process::ExitStatus, stderr: &str) -> anyhow::Error {
    let stderr = tail(stderr.trim_end(), 6000);
    anyhow::anyhow!(
        "command failed ({status}): {}\n--- stderr ---\n{stderr}",
        display(cmd)
    )
}

/// Runs a command to completion and returns its stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", display(cmd)))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(failure(cmd, out.status, &stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, handing each stderr line to `on_line` as it comes (for
/// progress), and keeps stderr for the error message.
pub fn run_streaming(cmd: &mut Command, mut on_line: impl FnMut(&str)) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", display(cmd)))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let mut kept = String::new();
    let stderr = child.stderr.take().expect("piped stderr");
    for line in BufReader::new(stderr).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        on_line(&line);
        kept.push_str(&line);
        kept.push('\n');
        if kept.len() > 256 * 1024 {
            kept = tail(&kept, 64 * 1024).to_string();
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", display(cmd)))?;
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failure(cmd, status, &kept));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Fails unless `program` is on the PATH, naming the package that has it.
pub fn require(program: &str, package: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("{program} not found: install {package} (scripts/deps/builder.sh)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let e = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let m = format!("{e:#}");
        assert!(m.contains("sh -c 'echo boom >&2; exit 3'"), "{m}");
        assert!(m.contains("boom"), "{m}");
        assert!(m.contains("exit status: 3"), "{m}");
    }

    #[test]
    fn streaming_sees_lines() {
        let mut lines = Vec::new();
        let out = run_streaming(
            Command::new("sh").args(["-c", "echo a >&2; echo out; echo b >&2"]),
            |l| lines.push(l.to_string()),
        )
        .unwrap();
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(out, "out\n");
    }

    #[test]
    fn tail_keeps_char_boundaries() {
        assert_eq!(tail("héllo", 3), "llo");
        assert_eq!(tail("ab", 5), "ab");
    }
}
