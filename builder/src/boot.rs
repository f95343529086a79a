//! `builder boot` (not built yet).

use crate::cli::BootArgs;

pub fn run(_args: BootArgs) -> anyhow::Result<i32> {
    anyhow::bail!("builder boot is not built yet")
}
