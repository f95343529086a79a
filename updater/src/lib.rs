//! The in-cluster half: the per-node agent and the kubectl plugin. It only
//! orchestrates; it never runs apt itself (bootpatch does).

pub mod agent;
pub mod cycle;
pub mod drain;
pub mod host;
pub mod hostns;
pub mod kube_util;
pub mod metrics;
pub mod node;
pub mod plugin;
pub mod policy;
pub mod schedule;
pub mod sim;
pub mod slots;
pub mod telemetry;
