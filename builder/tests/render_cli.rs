//! `builder render` as users run it, and the templates' own rules.

use std::process::Command;

fn builder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_builder"))
}

#[test]
fn renders_to_stdout_by_default_and_to_out_when_asked() {
    let out = builder()
        .args([
            "render",
            "--provider",
            "aws",
            "--set",
            "patchOnBoot=true",
            "--set",
            "hostname=n1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("#cloud-config\n"));
    assert!(stdout.contains("hostname: \"n1\""));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ud.yaml");
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "hostname: n1\n").unwrap();
    let out = builder()
        .args([
            "render",
            "--provider",
            "aws",
            "--set",
            "patchOnBoot=true",
            "--values",
        ])
        .arg(&values)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stdout);
}

#[test]
fn errors_name_the_key_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "patchOnBoot: true\nrebootIfRequierd: true\n").unwrap();
    for args in [
        vec!["--values".to_string(), values.display().to_string()],
        vec!["--set".into(), "schedule=61 * * * *".into()],
        vec!["--set".into(), "nope=1".into()],
    ] {
        let out = builder()
            .args(["render", "--provider", "gcp"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let key = ["rebootIfRequierd", "schedule", "nope"]
            .into_iter()
            .find(|k| {
                args.iter().any(|a| {
                    a.contains(k) || std::fs::read_to_string(a).is_ok_and(|t| t.contains(k))
                })
            })
            .unwrap();
        assert!(err.contains(&format!("value {key}")), "{err}");
    }
    let out = builder()
        .args(["render", "--provider", "ec2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown provider"));
    let out = builder()
        .args([
            "render",
            "--provider",
            "aws",
            "--bootpatch-url",
            "https://x.example/bp",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bootpatch-sha256"));
}

/// Every `{{ }}` in the templates ends in an escaping filter (or is a macro
/// call whose body does), so no value reaches the document raw.
#[test]
fn every_template_expression_is_escaped() {
    const FILTERS: &[&str] = &["|yq", "|sq", "|ybool", "|aptq"];
    let mut count = 0;
    for (name, source) in builder::render::template_sources() {
        // Comments may talk about {{ }}; only code counts.
        let mut code = String::new();
        let mut text = *source;
        while let Some(start) = text.find("{#") {
            code.push_str(&text[..start]);
            let end = text[start..].find("#}").expect("closed comment") + start;
            text = &text[end + 2..];
        }
        code.push_str(text);
        let mut rest = code.as_str();
        while let Some(start) = rest.find("{{") {
            let end = rest[start..].find("}}").expect("closed expression") + start;
            let expr: String = rest[start + 2..end]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let expr = expr.trim_matches('-');
            let ok = FILTERS.iter().any(|f| expr.ends_with(f))
                || (expr.contains("|yblock(") && expr.ends_with(')'))
                || expr.starts_with("m.");
            assert!(
                ok,
                "{name}: `{{{{ {expr} }}}}` is not escaped for where it lands"
            );
            count += 1;
            rest = &rest[end + 2..];
        }
    }
    assert!(count > 30, "found only {count} expressions");
}
