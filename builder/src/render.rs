//! `builder render` (not built yet).

use crate::cli::RenderArgs;

pub fn run(_args: RenderArgs) -> anyhow::Result<i32> {
    anyhow::bail!("builder render is not built yet")
}
