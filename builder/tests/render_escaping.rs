//! Property test: whatever string a user puts in a value, the rendered
//! user-data parses as YAML and the value comes back exactly where it lands:
//! in the YAML (ssh keys), in the YAML inside the YAML (bootpatch's config,
//! read by bootpatch's parser) and in shell (the node-join script, run by
//! `sh -c`, printing its arguments back).

mod render_support;

use builder::render::escape::{shell_quote, yaml_block, yaml_quote};
use builder::render::{BootpatchSource, JoinCommand, Provider, Renderer, Values};
use proptest::prelude::*;
use render_support::*;
use std::process::Command;
use std::sync::OnceLock;

/// Pieces that break naive templating, mixed with arbitrary characters.
fn nasty_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just(": ".to_string()),
        Just(" #".to_string()),
        Just("#".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("{{ x }}".to_string()),
        Just("{%".to_string()),
        Just("$(id)".to_string()),
        Just("`id`".to_string()),
        Just("${HOME}".to_string()),
        Just("- ".to_string()),
        Just("---".to_string()),
        Just("|".to_string()),
        Just(">".to_string()),
        Just("&a *a !!str ".to_string()),
        Just("\t".to_string()),
        Just(" ".to_string()),
        Just("é日本🦀".to_string()),
        Just("\u{85}\u{2028}\u{2029}\u{feff}\u{ffff}".to_string()),
        any::<char>()
            .prop_filter("no NUL", |c| *c != '\0')
            .prop_map(|c| c.to_string()),
        "[a-z]{1,8}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn renderer() -> &'static Renderer {
    static R: OnceLock<Renderer> = OnceLock::new();
    R.get_or_init(Renderer::new)
}

/// Runs a script with `sh -c`, as if bootpatch's first boot had finished.
fn run_join(script: &str) -> Vec<u8> {
    let marker = std::env::temp_dir().join("render-escaping-firstboot.done");
    std::fs::write(&marker, b"").unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("BOOTPATCH_FIRSTBOOT_DONE", &marker)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn yaml_str_at(doc: &str, key: &str) -> String {
    let v = yaml(doc);
    v.get(key).and_then(|x| x.as_str()).unwrap().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn escapers_round_trip(s in nasty_string()) {
        prop_assert_eq!(yaml_str_at(&format!("k: {}\n", yaml_quote(&s)), "k"), s.clone());
        let doc = format!("k: {}\nnext: 1\n", yaml_block(&s, 2));
        prop_assert_eq!(yaml_str_at(&doc, "k"), s.clone());
        let out = Command::new("sh").arg("-c").arg(format!("printf '%s' {}", shell_quote(&s))).output().unwrap();
        prop_assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
    }

    #[test]
    fn rendered_values_round_trip(
        a in nasty_string(),
        b in nasty_string(),
        key in nasty_string().prop_filter("one line", |s| !s.trim().is_empty() && !s.chars().any(char::is_control)),
        provider in prop::sample::select(Provider::ALL.to_vec()),
    ) {
        let values = Values {
            reboot_command: Some(vec!["systemctl".into(), a.clone(), b.clone()]),
            join_command: Some(JoinCommand::Argv(vec!["printf".into(), "%s\\0".into(), a.clone(), b.clone()])),
            ssh_authorized_keys: vec![key.clone()],
            ..Values::default()
        };
        let doc = renderer().render(provider, &values, &BootpatchSource::Baked).unwrap();
        // YAML: the ssh key.
        let v = yaml(&doc);
        prop_assert_eq!(v["ssh_authorized_keys"][0].as_str(), Some(key.as_str()));
        // YAML in YAML: bootpatch's own parser reads the config.
        let cfg = bootpatch::config::Config::from_yaml_str(&written_text(&doc, "/etc/bootpatch/config.yaml")).unwrap();
        prop_assert_eq!(&cfg.reboot_command, values.reboot_command.as_ref().unwrap());
        // Shell: the node-join script prints its arguments back.
        let script = written_text(&doc, "/usr/local/lib/bootpatch/node-join");
        let printed = run_join(&script);
        let want = format!("{a}\0{b}\0");
        prop_assert_eq!(String::from_utf8(printed).unwrap(), want);
    }

    #[test]
    fn shell_join_command_reaches_sh_unchanged(s in nasty_string()) {
        // A string joinCommand is the user's own shell line: it must reach
        // `sh -c` byte for byte. Here the line prints a quoted literal.
        let line = format!("printf '%s' {}", shell_quote(&s));
        let values = Values { join_command: Some(JoinCommand::Shell(line)), ..Values::default() };
        let doc = renderer().render(Provider::Nocloud, &values, &BootpatchSource::Baked).unwrap();
        let printed = run_join(&written_text(&doc, "/usr/local/lib/bootpatch/node-join"));
        prop_assert_eq!(String::from_utf8(printed).unwrap(), s);
    }
}
