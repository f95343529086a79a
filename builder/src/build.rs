//! `builder build` (not built yet).

use crate::cli::BuildArgs;

pub fn run(_args: BuildArgs) -> anyhow::Result<i32> {
    anyhow::bail!("builder build is not built yet")
}
