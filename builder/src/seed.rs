//! `builder seed` (not built yet).

use crate::cli::SeedArgs;

pub fn run(_args: SeedArgs) -> anyhow::Result<i32> {
    anyhow::bail!("builder seed is not built yet")
}
