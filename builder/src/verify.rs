//! `builder verify DIR`: re-hashes every artifact of a build against its
//! manifest and names each file that changed. It only reads.

use crate::cli::VerifyArgs;
use anyhow::Result;

pub fn run(a: VerifyArgs) -> Result<i32> {
    let bad = crate::manifest::verify(&a.dir)?;
    let m = crate::manifest::Manifest::load(&a.dir)?;
    for art in &m.artifacts {
        if !bad.iter().any(|b| b.file == art.file) {
            println!("ok       {}", art.file);
        }
    }
    for b in &bad {
        println!("CHANGED  {}: {}", b.file, b.problem);
    }
    if bad.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "builder verify: {} file(s) do not match {}",
            bad.len(),
            crate::manifest::FILE_NAME
        );
        Ok(1)
    }
}
