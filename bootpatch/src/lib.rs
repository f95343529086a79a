//! bootpatch: the node patch engine. Brings a node to the latest patch
//! release of its pinned OS stream, reboots only when required and allowed,
//! and records what it did in a small state file. It must stay tiny and
//! synchronous: no async runtime, no HTTP stack.

pub mod apt;
pub mod backend;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod cron;
pub mod dnf;
pub mod duration;
pub mod engine;
pub mod error;
pub mod lock;
pub mod log;
pub mod os;
pub mod state;
pub mod time;
