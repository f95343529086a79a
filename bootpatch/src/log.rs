//! Logging for a program that runs under systemd: plain lines on stderr with
//! the journal's priority prefixes (`<3>` error, `<4>` warning, `<6>` info,
//! `<7>` debug) when stderr is the journal, bare lines otherwise. No
//! timestamps of its own: the journal has them.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

static LEVEL: AtomicU8 = AtomicU8::new(1);
static JOURNAL: AtomicU8 = AtomicU8::new(0);

/// 0 = errors and warnings, 1 = info (default), 2 = debug; `-q` and `-v`.
pub fn init(verbosity: u8) {
    LEVEL.store(verbosity, Ordering::Relaxed);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    JOURNAL.store(u8::from(journal), Ordering::Relaxed);
}

fn emit(prio: u8, min_level: u8, tag: &str, msg: &str) {
    if LEVEL.load(Ordering::Relaxed) < min_level {
        return;
    }
    let mut e = std::io::stderr().lock();
    let _ = if JOURNAL.load(Ordering::Relaxed) == 1 {
        writeln!(e, "<{prio}>{msg}")
    } else {
        writeln!(e, "bootpatch: {tag}{msg}")
    };
}

pub fn error(msg: &str) {
    emit(3, 0, "error: ", msg)
}
pub fn warn(msg: &str) {
    emit(4, 0, "warning: ", msg)
}
pub fn info(msg: &str) {
    emit(6, 1, "", msg)
}
pub fn debug(msg: &str) {
    emit(7, 2, "", msg)
}
