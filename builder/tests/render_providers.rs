//! Every provider × several value sets renders, passes Debian's cloud-init
//! validator, and writes /etc/bootpatch/config.yaml that bootpatch's own
//! parser reads back to the values given.

mod render_support;

use bootpatch::config::Config;
use builder::render::{BootpatchSource, Provider, Renderer, Values};
use render_support::*;
use std::process::Command;

const KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZkxQ8RYJKwYBBAHaRw8BAQdA\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n";

/// Strings that break naive templating, in one place.
const NASTY: &[&str] = &[
    "a: b # not a comment",
    "line1\nline2\n  indented: true\n- item",
    "\"double\" 'single' `back` \\slash",
    "{{ provider }} {% if x %}{# c #}",
    "$(reboot) ${HOME} ; rm -rf / && echo pwned | cat > /x",
    "naïve café — 日本語 🦀 \u{85}\u{2028}\u{2029}\u{feff}",
    "\t tab and\r\nCRLF\u{7}bell",
    "---\n...\n%YAML 1.2\n!!python/object:os.system",
];

fn value_sets() -> Vec<(&'static str, Values)> {
    let minimal = Values::default();
    let full = Values::from_yaml_str(&format!(
        r#"
patchOnBoot: true
rebootIfRequired: true
schedule: "0 2 * * 0"
sources:
  - name: site-updates
    uris: ["https://repo.example.internal/debian", "file:/srv/repo"]
    suites: [bookworm, bookworm-updates]
    components: [main, contrib]
    signedBy: {key:?}
  - name: local
    uris: ["file:/srv/local"]
    suites: [stable]
    signedBy: /etc/apt/keyrings/local.asc
sourcesMode: only
lockWaitTimeout: 90s
retryDeadline: 1h30m
rebootCommand: [systemctl, reboot, --no-wall]
httpProxy: http://proxy.example.internal:3128
httpsProxy: http://proxy.example.internal:3129
noProxy: localhost,127.0.0.1,.svc
hostname: node-7.cluster.example.internal
sshAuthorizedKeys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBtw admin@example
  - ssh-rsa AAAAB3NzaC1yc2E= other
joinCommand: [kubeadm, join, "10.0.0.1:6443", --token, abcdef.0123456789abcdef, --discovery-token-ca-cert-hash, "sha256:0f"]
"#,
        key = KEY
    ))
    .unwrap();
    let shell_join = Values::load(
        None,
        &[
            "patchOnBoot=false".into(),
            "rebootIfRequired=false".into(),
            "hostname=worker3".into(),
            "joinCommand=kubeadm join 10.0.0.1:6443 --token \"$(cat /etc/token)\" && touch /joined"
                .into(),
        ],
    )
    .unwrap();
    let mut nasty = Values::from_yaml_str("schedule: \"@daily\"\n").unwrap();
    nasty.reboot_command = Some(
        std::iter::once("systemctl".to_string())
            .chain(NASTY.iter().map(|s| s.to_string()))
            .collect(),
    );
    nasty.join_command = Some(builder::render::JoinCommand::Argv(
        std::iter::once("printf".to_string())
            .chain(NASTY.iter().map(|s| s.to_string()))
            .collect(),
    ));
    nasty.ssh_authorized_keys = NASTY
        .iter()
        .filter(|s| !s.chars().any(char::is_control))
        .map(|s| s.to_string())
        .collect();
    let mut src: bootpatch::config::Source =
        serde_norway::from_str("name: odd\nuris: [\"file:/srv/odd\"]\nsuites: [x]\nsignedBy: /k\n")
            .unwrap();
    src.signed_by = format!("/{}", NASTY.join("|"));
    nasty.sources = vec![src];
    vec![
        ("minimal", minimal),
        ("full", full),
        ("shell-join", shell_join),
        ("nasty", nasty),
    ]
}

fn bootpatch_sources() -> Vec<(&'static str, BootpatchSource)> {
    vec![
        ("baked", BootpatchSource::Baked),
        (
            "url",
            BootpatchSource::url(
                "https://downloads.example.internal/bootpatch?v=1&arch=x86_64",
                &"ab".repeat(32),
            )
            .unwrap(),
        ),
        (
            "embed",
            BootpatchSource::embed(b"\x7fELF small enough to ride along"),
        ),
    ]
}

/// The config bootpatch would read on the node.
fn node_config(doc: &str) -> Config {
    let text = written_text(doc, "/etc/bootpatch/config.yaml");
    Config::from_yaml_str(&text)
        .unwrap_or_else(|e| panic!("bootpatch refuses the config: {e}\n{text}"))
}

#[test]
fn every_provider_and_value_set_is_valid_cloud_config() {
    let renderer = Renderer::new();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for provider in Provider::ALL {
        for (set_name, values) in value_sets() {
            for (bp_name, bp) in bootpatch_sources() {
                let doc = renderer
                    .render(provider, &values, &bp)
                    .unwrap_or_else(|e| panic!("{provider}/{set_name}/{bp_name}: {e}"));
                assert!(doc.starts_with("#cloud-config\n"), "{provider}: {doc}");
                let file = dir
                    .path()
                    .join(format!("{provider}-{set_name}-{bp_name}.yaml"));
                std::fs::write(&file, &doc).unwrap();
                if let Err(e) = cloud_init_schema(&file) {
                    panic!("cloud-init schema refuses {provider}/{set_name}/{bp_name}: {e}\n{doc}");
                }
                let cfg = node_config(&doc);
                assert_eq!(cfg.patch_on_boot, values.patch_on_boot.unwrap_or(true));
                assert_eq!(
                    cfg.reboot_if_required,
                    values.reboot_if_required.unwrap_or(false)
                );
                assert_eq!(cfg.schedule, values.schedule);
                assert_eq!(cfg.sources, values.sources);
                if let Some(rc) = &values.reboot_command {
                    assert_eq!(&cfg.reboot_command, rc);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 4 * 3);
}

#[test]
fn full_values_land_where_cloud_init_and_bootpatch_read_them() {
    let (_, values) = value_sets().remove(1);
    let doc = Renderer::new()
        .render(Provider::Aws, &values, &BootpatchSource::Baked)
        .unwrap();
    let v = yaml(&doc);
    assert_eq!(v["hostname"].as_str(), Some("node-7"));
    assert_eq!(v["fqdn"].as_str(), Some("node-7.cluster.example.internal"));
    assert_eq!(v["ssh_authorized_keys"].as_sequence().unwrap().len(), 2);
    let cfg = node_config(&doc);
    assert_eq!(cfg.sources_mode, bootpatch::config::SourcesMode::Only);
    assert_eq!(
        cfg.lock_wait_timeout,
        bootpatch::duration::Duration::from_secs(90)
    );
    assert_eq!(
        cfg.retry_deadline,
        bootpatch::duration::Duration::from_secs(5400)
    );
    assert_eq!(cfg.sources[0].signed_by, KEY);
    let apt = written_text(&doc, "/etc/apt/apt.conf.d/90bootpatch-proxy");
    assert!(
        apt.contains("Acquire::http::Proxy \"http://proxy.example.internal:3128\";"),
        "{apt}"
    );
    assert!(
        apt.contains("Acquire::https::Proxy \"http://proxy.example.internal:3129\";"),
        "{apt}"
    );
    // Baked image: no bootcmd, no installer; the join runs from runcmd.
    assert!(v.get("bootcmd").is_none());
    assert!(written_file(&doc, "/usr/local/lib/bootpatch/install-bootpatch").is_none());
    let runcmd = v["runcmd"].as_sequence().unwrap();
    assert_eq!(runcmd.len(), 1);
    let join = written_text(&doc, "/usr/local/lib/bootpatch/node-join");
    assert!(
        join.contains("exec 'kubeadm' 'join' '10.0.0.1:6443'"),
        "{join}"
    );
}

/// PyYAML (what cloud-init itself uses) reads the nasty strings back
/// exactly, through both levels: user-data, then the config file inside it.
#[test]
fn pyyaml_reads_nasty_values_back() {
    require_tool("python3");
    let (_, values) = value_sets().remove(3);
    let dir = tempfile::tempdir().unwrap();
    for provider in Provider::ALL {
        let doc = Renderer::new()
            .render(provider, &values, &BootpatchSource::Baked)
            .unwrap();
        let file = dir.path().join("ud.yaml");
        std::fs::write(&file, &doc).unwrap();
        let script = r#"
import json, sys, yaml
ud = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
cfg = [f for f in ud["write_files"] if f["path"] == "/etc/bootpatch/config.yaml"][0]["content"]
print(json.dumps({"reboot": yaml.safe_load(cfg)["rebootCommand"], "keys": ud["ssh_authorized_keys"]}))
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want_reboot: Vec<String> = values.reboot_command.clone().unwrap();
        assert_eq!(got["reboot"], serde_json::json!(want_reboot), "{provider}");
        assert_eq!(
            got["keys"],
            serde_json::json!(values.ssh_authorized_keys),
            "{provider}"
        );
    }
}

#[test]
fn stock_image_gets_installer_and_unit_before_join() {
    let (_, values) = value_sets().remove(1);
    let bp =
        BootpatchSource::url("https://dl.example.internal/bootpatch", &"0f".repeat(32)).unwrap();
    let doc = Renderer::new().render(Provider::Gcp, &values, &bp).unwrap();
    let v = yaml(&doc);
    let bootcmd = v["bootcmd"][0].as_sequence().unwrap();
    let script = bootcmd[2].as_str().unwrap();
    let unit = include_str!("../../templates/systemd/bootpatch-firstboot.service");
    assert!(script.contains("systemctl start --no-block bootpatch-firstboot.service"));
    // The unit is the repository's own, byte for byte, once the shell reads it.
    let dir = tempfile::tempdir().unwrap();
    let probe = script
        .replace("/etc/systemd/system", &dir.path().display().to_string())
        .replace("systemctl ", ": ")
        .replace("[ -e /var/lib/bootpatch/firstboot.done ] && exit 0", ":");
    let out = Command::new("sh").arg("-c").arg(&probe).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bootpatch-firstboot.service")).unwrap(),
        unit
    );
    let dropin = std::fs::read_to_string(
        dir.path()
            .join("bootpatch-firstboot.service.d/10-install.conf"),
    )
    .unwrap();
    assert!(dropin.contains("ExecStartPre=/usr/local/lib/bootpatch/install-bootpatch"));
    let installer = written_text(&doc, "/usr/local/lib/bootpatch/install-bootpatch");
    assert!(
        installer.contains(&format!("want='{}'", "0f".repeat(32))),
        "{installer}"
    );
    assert!(
        installer.contains("url='https://dl.example.internal/bootpatch'"),
        "{installer}"
    );
    assert!(installer.contains("refusing to install"), "{installer}");
}

/// The installer refuses a binary whose sum differs, and installs one that
/// matches (run against a local file:// download, curl permitting).
#[test]
fn installer_checks_the_sum() {
    let has_curl = Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .unwrap()
        .status
        .success();
    if !has_curl {
        eprintln!("curl missing: installer download not exercised");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bootpatch-src");
    std::fs::write(&bin, b"#!/bin/sh\necho fake bootpatch\n").unwrap();
    let good = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&bin).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    for (sum, ok) in [(good.clone(), true), ("00".repeat(32), false)] {
        let url = format!("file://{}", bin.display());
        let bp = BootpatchSource::url(&url, &sum).unwrap();
        let doc = Renderer::new()
            .render(Provider::Nocloud, &Values::default(), &bp)
            .unwrap();
        let dest = dir.path().join("sbin-bootpatch");
        let _ = std::fs::remove_file(&dest);
        let script = written_text(&doc, "/usr/local/lib/bootpatch/install-bootpatch")
            .replace(
                "dest=/usr/local/sbin/bootpatch",
                &format!("dest={}", dest.display()),
            )
            .replace("mkdir -p /usr/local/sbin", ":");
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(dest.exists(), ok);
        if !ok {
            assert!(String::from_utf8_lossy(&out.stderr).contains("refusing"));
        }
    }
}

#[test]
fn sample_values_file_renders() {
    let text = include_str!("../../templates/cloud-init/values.sample.yaml");
    let values = Values::from_yaml_str(text).unwrap();
    for provider in Provider::ALL {
        Renderer::new()
            .render(provider, &values, &BootpatchSource::Baked)
            .unwrap();
    }
}

#[test]
fn values_bootpatch_refuses_are_errors_naming_the_key() {
    let renderer = Renderer::new();
    for (yaml_text, key) in [
        ("schedule: \"61 * * * *\"\n", "schedule"),
        ("lockWaitTimeout: 10 parsecs\n", "lockWaitTimeout"),
        ("rebootCommand: []\n", "rebootCommand"),
        ("sources:\n  - name: Bad_Name\n    uris: [\"file:/x\"]\n    suites: [s]\n    signedBy: /k\n", "sources[0].name"),
        ("sources:\n  - name: a\n    uris: [\"file:/x\"]\n    suites: [s]\n    signedBy: \"\"\n", "sources[0].signedBy"),
    ] {
        let values = Values::from_yaml_str(yaml_text).unwrap();
        let err = renderer
            .render(Provider::Aws, &values, &BootpatchSource::Baked)
            .unwrap_err();
        match &err {
            builder::render::RenderError::InvalidValue { key: k, .. } => assert_eq!(k, key, "{err}"),
            other => panic!("{yaml_text}: {other}"),
        }
    }
    for (yaml_text, key) in [
        ("patchOnBoot: yes please\n", "patchOnBoot"),
        ("hostnme: a\n", "hostnme"),
        (
            "sources: [{name: a, uris: [x], suites: [s], signedBy: /k, extra: 1}]\n",
            "sources[0].extra",
        ),
        ("joinCommand: {cmd: x}\n", "joinCommand"),
        ("sshAuthorizedKeys: key\n", "sshAuthorizedKeys"),
    ] {
        let err = Values::from_yaml_str(yaml_text).unwrap_err();
        match &err {
            builder::render::RenderError::InvalidValue { key: k, .. } => {
                assert_eq!(k, key, "{err}")
            }
            other => panic!("{yaml_text}: {other}"),
        }
    }
}
