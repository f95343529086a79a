//! Logging set-up for the binaries: `tracing` to stderr, human-readable or JSON (one object a
//! line, for log collectors), filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().with_current_span(true).try_init()
    } else {
        b.try_init()
    };
}
