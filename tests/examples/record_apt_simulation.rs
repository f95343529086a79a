//! Records real `apt-get -s upgrade` output over the fixture repository, for
//! the parser test in bootpatch (bootpatch/tests/fixtures/apt/):
//! `cargo run -p bootpatch-e2e --example record_apt_simulation > bootpatch/tests/fixtures/apt/upgrade-simulate.txt`

use bootpatch_e2e::fixtures::fixtures;
use bootpatch_e2e::repo::{self, Key};
use bootpatch_e2e::root::Root;
fn main() {
    let f = fixtures();
    let root = Root::new();
    let mut args = vec!["dpkg".to_string(), "-i".into()];
    for deb in &f.v1 {
        args.push(root.put(deb, "var/tmp/v1"));
    }
    root.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let key = Key::generate("bench");
    repo::build(
        &root.path("/srv/bootpatch-repo"),
        "bookworm-updates",
        &f.v2,
        Some(&key),
    );
    let indented: String = key
        .armored
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    root.write("etc/bootpatch/config.yaml", &format!("sourcesMode: only\nsources:\n  - name: fixtures\n    uris: [\"file:/srv/bootpatch-repo\"]\n    suites: [bookworm-updates]\n    signedBy: |\n{indented}"));
    let _ = root.run(&["bootpatch", "check"]);
    let out = root.run(&[
        "env",
        "LC_ALL=C",
        "apt-get",
        "-o",
        "Dir::Etc::SourceList=/dev/null",
        "-o",
        "Dir::State::Lists=/var/lib/bootpatch/apt/lists",
        "-o",
        "Dir::Etc::SourceParts=/var/lib/bootpatch/apt/sources.list.d",
        "-o",
        "APT::Get::Upgrade-Allow-New=true",
        "-s",
        "-o",
        "Debug::NoLocking=1",
        "upgrade",
    ]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
}
