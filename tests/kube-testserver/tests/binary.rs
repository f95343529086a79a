//! The `kube-testserver` binary: starts on a free port, writes a kubeconfig kubectl can use,
//! seeds nodes and pods on request, and rejects bad arguments.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_serves_kubectl() {
    let dir = std::env::temp_dir().join(format!("kube-testserver-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_kube-testserver"))
            .args(["--listen", "127.0.0.1:0", "--kubeconfig-out"])
            .arg(&kc)
            .args(["--seed-nodes", "2", "--seed-pods-per-node", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the binary"),
    );
    let end = Instant::now() + Duration::from_secs(10);
    while !kc.exists() {
        assert!(Instant::now() < end, "kubeconfig written within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(text.contains("server: https://127.0.0.1:"), "{text}");
    assert!(text.contains("certificate-authority-data: ") && text.contains("token: "));
    assert!(!text.contains(":0\n"), "the real port, not 0");
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "pods", "-A", "-o", "name", "--request-timeout=10s"])
        .output()
        .expect("running kubectl");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_rejects_unknown_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-testserver"))
        .arg("--bogus")
        .output()
        .expect("running the binary");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument \"--bogus\""));
}
