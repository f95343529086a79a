//! A minimal client of QEMU's machine protocol (QMP) over a Unix socket, for
//! what `builder boot` asks of a running guest: pause it, save its state to
//! a file, resume a saved state, quit. One JSON object per line each way;
//! asynchronous events are skipped. No other QEMU control lives here.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU makes the socket just after it starts, so this
    /// retries until `timeout`) and leaves capabilities negotiation.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", socket.display()))
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("QEMU's monitor greeted with {greeting}");
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QEMU closed its monitor");
        }
        serde_json::from_str(&line).with_context(|| format!("QEMU's monitor said {line:?}"))
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        writeln!(self.writer, "{msg}")?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!(
                    "QEMU refused {command}: {}",
                    e["desc"].as_str().unwrap_or("?")
                );
            }
            // An event ({"event": ...}): not ours.
        }
    }

    /// Polls `query` until `done` says the answer is final, or `timeout`.
    pub fn wait_for(
        &mut self,
        query: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.execute(query, json!({}))?;
            if done(&v)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU's {query} still says {v} after {} s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether a `query-migrate` answer is final: Ok(true) once completed, an
/// error naming QEMU's reason when it failed.
pub fn migration_done(v: &Value) -> Result<bool> {
    match v["status"].as_str() {
        Some("completed") => Ok(true),
        Some("failed") | Some("cancelled") => bail!(
            "saving the guest's state failed: {}",
            v["error-desc"].as_str().unwrap_or("no reason given")
        ),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_states() {
        assert!(!migration_done(&json!({"status": "active"})).unwrap());
        assert!(!migration_done(&json!({})).unwrap());
        assert!(migration_done(&json!({"status": "completed"})).unwrap());
        let e = migration_done(&json!({"status": "failed", "error-desc": "disk full"}));
        assert!(format!("{:#}", e.unwrap_err()).contains("disk full"));
    }
}
