//! What a build tells its user while it runs: one line per step with its
//! wall time, a live status line for long steps on a terminal, nothing but
//! errors with `--quiet`, and one JSON object per event with `--json` (for
//! CI). It records each step's duration for the manifest and the benchmark.

use anyhow::Result;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Human,
    Quiet,
    Json,
}

#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    tty: bool,
    t0: Instant,
    status: Arc<Mutex<String>>,
    timings: Mutex<Vec<(String, Duration)>>,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            tty: std::io::stderr().is_terminal(),
            t0: Instant::now(),
            status: Arc::new(Mutex::new(String::new())),
            timings: Mutex::new(Vec::new()),
        }
    }

    /// Runs one named step. A failure comes back as "step `<name>` failed: ...".
    pub fn step<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        if let Ok(mut s) = self.status.lock() {
            s.clear();
        }
        if self.mode == Mode::Json {
            self.json(json!({"event": "step-start", "step": name}));
        }
        let done = Arc::new(AtomicBool::new(false));
        let ticker = (self.mode == Mode::Human && self.tty).then(|| {
            let done = done.clone();
            let status = self.status.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let st = status.lock().map(|s| s.clone()).unwrap_or_default();
                    let mut line = format!("  {name} {:>5.1}s {st}", start.elapsed().as_secs_f64());
                    line.truncate(100);
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                }
            })
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        if let Some(t) = ticker {
            let _ = t.join();
            eprint!("\r\x1b[2K");
        }
        let took = start.elapsed();
        if let Ok(mut t) = self.timings.lock() {
            t.push((name.to_string(), took));
        }
        match &result {
            Ok(_) => match self.mode {
                Mode::Human => eprintln!("✔ {name} ({:.1}s)", took.as_secs_f64()),
                Mode::Json => self.json(json!({"event": "step-done", "step": name,
                    "seconds": took.as_secs_f64()})),
                Mode::Quiet => {}
            },
            Err(e) => {
                if self.mode == Mode::Json {
                    self.json(json!({"event": "step-failed", "step": name,
                        "seconds": took.as_secs_f64(), "error": format!("{e:#}")}));
                } else if self.mode == Mode::Human {
                    eprintln!("✘ {name} ({:.1}s)", took.as_secs_f64());
                }
            }
        }
        result.map_err(|e| e.context(format!("step `{name}` failed")))
    }

    /// Sets the live status text of the running step.
    pub fn status(&self, text: &str) {
        if let Ok(mut s) = self.status.lock() {
            s.clear();
            s.push_str(text);
        }
    }

    /// A plain message (human mode) or a note event (JSON mode).
    pub fn note(&self, msg: &str) {
        match self.mode {
            Mode::Human => eprintln!("  {msg}"),
            Mode::Json => self.json(json!({"event": "note", "message": msg})),
            Mode::Quiet => {}
        }
    }

    pub fn json(&self, v: serde_json::Value) {
        println!("{v}");
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn timings(&self) -> Vec<(String, Duration)> {
        self.timings.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
