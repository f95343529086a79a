//! Records real `apt-get -s upgrade` output over the fixture repository, for
//! the parser test in bootpatch (bootpatch/tests/fixtures/apt/):
//! `cargo run -p bootpatch-e2e --example record_apt_simulation > bootpatch/tests/fixtures/apt/upgrade-simulate.txt`

use bootpatch_e2e::fixtures::fixtures;
use bootpatch_e2e::repo::Key;
use bootpatch_e2e::root::fixture_node;
fn main() {
    let key = Key::generate("record");
    let root = fixture_node(&fixtures().v2, &key);
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
