//! The CI-side tool: image specs, root file systems, disk assembly, output
//! formats, manifests and user-data rendering. Nothing here runs on a node.
//!
//! Each subcommand of the `builder` binary lives in its own module and is
//! entered through a `run` function taking the parsed arguments from [`cli`].

/// `builder --version`: the version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILDER_COMMIT"),
    ")"
);

pub mod aptlists;
pub mod boot;
pub mod build;
pub mod cli;
pub mod cmd;
pub mod disk;
pub mod formats;
pub mod grub;
pub mod hash;
pub mod hostapt;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod packed;
pub mod progress;
pub mod qmp;
pub mod render;
pub mod rootfs;
pub mod seed;
pub mod shipped;
pub mod spec;
pub mod verify;
