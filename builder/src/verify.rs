//! `builder verify` (not built yet).

use crate::cli::VerifyArgs;

pub fn run(_args: VerifyArgs) -> anyhow::Result<i32> {
    anyhow::bail!("builder verify is not built yet")
}
