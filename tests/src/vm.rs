//! Support for the first-boot tests in a VM: the debian-12 image built by
//! `builder build` (cached by its inputs), a patch repository on an ext4
//! disk made without a mount (`mkfs.ext4 -d`), user-data rendered by
//! `builder render --provider nocloud`, a `builder seed` volume, and boots
//! with `builder boot`, whose serial console is read for a report the guest
//! prints before it powers off.
//!
//! The guest-side instrumentation (mounting the patch disk, the report, the
//! power-off) is a second cloud-config part of a multi-part user-data, so
//! the rendered part is exactly what users get.

use crate::{sh, workspace};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::images::builder_bin;

fn builder(args: &[&str]) -> Command {
    let mut c = Command::new(builder_bin());
    c.args(args).current_dir(workspace());
    c
}

/// A built image and the package cache it was built from.
pub struct Image {
    pub raw: PathBuf,
    pub cache: PathBuf,
}

/// The debian-12 image every VM test boots (overlays of it): the one
/// build shared across test binaries (`images::built`).
pub fn debian12_image() -> Image {
    let b = crate::images::built("debian-12");
    Image {
        raw: b.raw(),
        cache: b.cache,
    }
}

/// The .deb of `name` in the builder's package cache (its `debs/` folder).
pub fn cached_deb(cache: &Path, name: &str) -> PathBuf {
    let prefix = format!("{name}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache.join("debs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
                && p.extension().is_some_and(|e| e == "deb")
        })
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{name} not in the package cache {}", cache.display()))
}

/// An ext4 disk image labelled `label` holding `dir`, made without a mount.
pub fn ext4_disk(dir: &Path, out: &Path, label: &str) {
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", label, "-d"])
        .arg(dir)
        .arg(out)
        .arg("64M");
    sh(c);
}

/// A copy-on-write overlay of `base`, so a test's boots keep their changes
/// without touching the cached image.
pub fn overlay(base: &Path, out: &Path) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(out);
    sh(c);
}

/// Renders NoCloud user-data from a values file with `builder render`.
pub fn render(values: &Path, out: &Path) {
    render_with(values, out, &[]);
}

/// [`render`] with more `builder render` arguments (`--embed-bootpatch`...).
pub fn render_with(values: &Path, out: &Path, extra: &[&str]) {
    let (v, o) = (
        values.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    let mut args = vec![
        "render",
        "--provider",
        "nocloud",
        "--values",
        &v,
        "--out",
        &o,
    ];
    args.extend_from_slice(extra);
    sh(builder(&args));
}

/// A test-only HTTP server on the host's loopback (GET and HEAD), until
/// dropped: one file at every path ([`HttpServer::file`]) or the files below
/// a folder, read at each request so a test may add packages between phases
/// ([`HttpServer::dir`]). A guest reaches it through `builder boot --forward
/// GUEST_PORT:PORT` (a relay per guest connection). [`HttpServer::down`]
/// closes the port, so connections are refused as by a server that is down;
/// [`HttpServer::up`] opens it again.
pub struct HttpServer {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    what: std::sync::Arc<Served>,
    running: std::sync::Mutex<Option<std::sync::Arc<std::sync::atomic::AtomicBool>>>,
}

enum Served {
    File(Vec<u8>),
    Dir(PathBuf),
}

impl Served {
    fn lookup(&self, path: &str) -> Option<Vec<u8>> {
        match self {
            Served::File(body) => Some(body.clone()),
            Served::Dir(root) => {
                let rel = percent_decoded(path.split('?').next().unwrap_or(""))?;
                let rel = rel.trim_start_matches('/');
                if rel.split('/').any(|c| c == ".." || c.is_empty()) {
                    return None;
                }
                std::fs::read(root.join(rel)).ok()
            }
        }
    }
}

/// A URL path with its `%XX` escapes decoded (apt escapes the `+` of a
/// version); None when an escape is malformed or the result is not UTF-8.
fn percent_decoded(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl HttpServer {
    pub fn file(file: &Path) -> HttpServer {
        HttpServer::start(Served::File(std::fs::read(file).unwrap()), 0)
    }

    pub fn dir(root: &Path) -> HttpServer {
        HttpServer::start(Served::Dir(root.to_path_buf()), 0)
    }

    fn start(what: Served, port: u16) -> HttpServer {
        let mut s = HttpServer {
            port,
            requests: Default::default(),
            what: std::sync::Arc::new(what),
            running: std::sync::Mutex::new(None),
        };
        s.port = s.listen(port);
        s
    }

    fn listen(&self, port: u16) -> u16 {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("listening on 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, r, what) = (stop.clone(), self.requests.clone(), self.what.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                let (what, r, s) = (what.clone(), r.clone(), s.clone());
                std::thread::spawn(move || serve_stream(c, &what, &r, &s));
            }
        });
        *self.running.lock().unwrap() = Some(stop);
        port
    }

    /// Closes the port (and every open connection, at its next request).
    pub fn down(&self) {
        if let Some(stop) = self.running.lock().unwrap().take() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        }
    }

    /// Opens the same port again after [`HttpServer::down`].
    pub fn up(&self) {
        if self.running.lock().unwrap().is_none() {
            self.listen(self.port);
        }
    }
}

fn serve_stream(
    mut c: std::net::TcpStream,
    what: &Served,
    count: &std::sync::atomic::AtomicUsize,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let end = pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (status, body) = match what.lookup(path) {
            Some(b) => ("200 OK", b),
            None => ("404 Not Found", Vec::new()),
        };
        let header = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if c.write_all(header.as_bytes()).is_err()
            || (method != "HEAD" && c.write_all(&body).is_err())
        {
            return;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// The test's own cloud-config part: mounts the patch disk on every boot
/// (when present) and, once the boot is through cloud-final, prints a
/// report on the serial console and powers off.
pub const INSTRUMENTATION: &str = r#"#cloud-config
bootcmd:
  - [sh, -c, "mkdir -p /srv/patches; mount -o ro LABEL=bpatches /srv/patches || true"]
  - [systemd-run, --no-block, --unit=bootpatch-test-report, -p, "After=cloud-final.service bootpatch-firstboot.service", /bin/sh, -c, "while [ ! -x /usr/local/sbin/bootpatch-test-report ]; do sleep 1; done; exec /usr/local/sbin/bootpatch-test-report"]
write_files:
  - path: /usr/local/sbin/bootpatch-test-report
    permissions: "0755"
    content: |
      #!/bin/sh
      # Test instrumentation: report on the serial console, then power off.
      exec >/dev/ttyS0 2>&1
      dmesg -n 1
      b64() { base64 -w0; }
      echo "BPT-BEGIN"
      echo "BPT-BOOTID $(cat /proc/sys/kernel/random/boot_id)"
      echo "BPT-STATUS $(/usr/local/sbin/bootpatch status --json | b64)"
      echo "BPT-STATE $(b64 < /var/lib/bootpatch/state.json)"
      echo "BPT-JOIN $( (cat /var/lib/bootpatch-test/join 2>/dev/null || true) | b64)"
      echo "BPT-AUDIT $(dpkg --audit | b64)"
      echo "BPT-DEBIAN-VERSION $(cat /etc/debian_version)"
      echo "BPT-UNIT $(systemctl show bootpatch-firstboot.service -p ConditionResult -p Result -p ExecMainStatus -p CPUUsageNSec | b64)"
      echo "BPT-BLAME $(systemd-analyze blame --no-pager 2>/dev/null | head -n 15 | b64)"
      echo "BPT-END"
      sync
      systemctl poweroff
"#;

/// Virtual CPUs for a guest that boots alone in its test binary: both cores,
/// since a lone guest boots faster with two (see [`Guest::start_as`]),
/// unless the test runner runs another binary's guest beside it and says
/// how many in BOOTPATCH_TEST_GUEST_CPUS (scripts/run-tests sets 1).
pub fn lone_guest_cpus() -> String {
    match std::env::var("BOOTPATCH_TEST_GUEST_CPUS") {
        Ok(n) if n.parse::<u32>().is_ok_and(|n| n > 0) => n,
        Ok(n) => panic!("BOOTPATCH_TEST_GUEST_CPUS: {n:?} is not a positive number"),
        Err(_) => "2".into(),
    }
}

/// A cloud-config part that has dpkg print each status change of a package
/// on the serial console (`status: base-files: half-installed`), so a test
/// can act at a named moment of an install: dpkg hands its machine-readable
/// status to the `status-logger` command.
pub const DPKG_STATUS_ON_CONSOLE: &str = r#"#cloud-config
write_files:
  - path: /etc/dpkg/dpkg.cfg.d/bootpatch-test-status
    content: |
      # Test instrumentation: dpkg's status changes on the serial console.
      status-logger "cat >/dev/ttyS0"
"#;

/// Multi-part user-data: the rendered document, then further cloud-config
/// parts, merged into it by appending lists (bootcmd, write_files).
pub fn multipart(rendered: &str, parts: &[&str]) -> String {
    let b = "BOOTPATCH-TEST-BOUNDARY";
    let mut out = format!("Content-Type: multipart/mixed; boundary=\"{b}\"\nMIME-Version: 1.0\n\n");
    out += &format!("--{b}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{rendered}\n");
    for p in parts {
        out += &format!(
            "--{b}\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\nMerge-Type: list(append)+dict(no_replace,recurse_list)+str()\n\n{p}\n"
        );
    }
    out + &format!("--{b}--\n")
}

/// The guest's patch packages, from the image's own package cache: a
/// repacked base-files that raises the point release and a repacked kernel
/// metapackage whose postinst asks for a reboot. Returns the .debs and the
/// Patched Version they lead to.
pub fn patch_packages(image: &Image, out: &Path) -> (Vec<PathBuf>, String) {
    std::fs::create_dir_all(out).unwrap();
    let (bf, _, point) =
        crate::fixtures::point_release(&cached_deb(&image.cache, "base-files"), out);
    let (kernel, _) =
        crate::fixtures::reboot_requiring(&cached_deb(&image.cache, KERNEL_META), out);
    (vec![bf, kernel], point)
}

/// [`patch_packages`] with a real kernel update in place of the repacked
/// metapackage alone: a new ABI's (signed) kernel image package and the
/// metapackage depending on it ([`crate::fixtures::kernel_update`]).
/// Returns the .debs, the Patched Version and the new kernel release.
pub fn patch_packages_with_kernel(image: &Image, out: &Path) -> (Vec<PathBuf>, String, String) {
    std::fs::create_dir_all(out).unwrap();
    let (bf, _, point) =
        crate::fixtures::point_release(&cached_deb(&image.cache, "base-files"), out);
    let m = crate::images::built("debian-12").dir.join("manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    let release = manifest["kernel"].as_str().unwrap();
    let (mut debs, new) = crate::fixtures::kernel_update(
        &cached_deb(&image.cache, &format!("linux-image-{release}")),
        &cached_deb(&image.cache, KERNEL_META),
        out,
    );
    debs.push(bf);
    (debs, point, new)
}

/// The kernel metapackage of the debian-12 image, whose repacked upgrade
/// asks for a reboot.
pub const KERNEL_META: &str = "linux-image-cloud-amd64";

/// A signed repository of `debs` for bookworm-updates on an ext4 disk
/// labelled `bpatches`, which the instrumentation mounts at /srv/patches.
pub fn patch_disk(debs: &[PathBuf], signer: &crate::repo::Key, work: &Path) -> PathBuf {
    let repo_dir = work.join("repo");
    crate::repo::build(&repo_dir, "bookworm-updates", debs, Some(signer));
    let img = work.join("patches.img");
    ext4_disk(&repo_dir, &img, "bpatches");
    img
}

/// Renders `values` and adds `extra` cloud-config parts (the
/// instrumentation first), then makes the seed. Returns the seed's path.
pub fn seed_for(values: &str, extra: &[&str], work: &Path, tag: &str) -> PathBuf {
    seed_rendered_with(values, extra, work, tag, &[])
}

/// [`seed_for`], rendering with more `builder render` arguments.
pub fn seed_rendered_with(
    values: &str,
    extra: &[&str],
    work: &Path,
    tag: &str,
    render_args: &[&str],
) -> PathBuf {
    let mut parts = vec![INSTRUMENTATION];
    parts.extend_from_slice(extra);
    seed_parts(values, &parts, work, tag, render_args)
}

/// A seed of `values` rendered by `builder render` and `parts` after it,
/// with none of the first-boot tests' instrumentation (no report, no
/// power-off): for a guest that keeps running.
pub fn seed_parts(
    values: &str,
    parts: &[&str],
    work: &Path,
    tag: &str,
    render_args: &[&str],
) -> PathBuf {
    let vals = work.join(format!("{tag}.values.yaml"));
    std::fs::write(&vals, values).unwrap();
    let rendered = work.join(format!("{tag}.rendered.yaml"));
    render_with(&vals, &rendered, render_args);
    let ud = work.join(format!("{tag}.user-data"));
    std::fs::write(
        &ud,
        multipart(&std::fs::read_to_string(&rendered).unwrap(), parts),
    )
    .unwrap();
    let iso = work.join(format!("{tag}.seed.iso"));
    seed(&ud, &iso);
    iso
}

/// Makes a NoCloud seed with `builder seed`.
pub fn seed(user_data: &Path, out: &Path) {
    let (u, o) = (
        user_data.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    sh(builder(&["seed", "--user-data", &u, "--out", &o]));
}

/// A guest started by `builder boot --writable`, its own process group so a
/// test can cut its power.
pub struct Guest {
    child: Child,
    pub serial: PathBuf,
    started: Instant,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How a guest starts: a cold boot, a boot that saves its running state
/// when a text shows on the console, or a resume of such a state.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    Boot,
    /// A cold boot under another firmware than `builder boot`'s default
    /// (`bios`, `uefi`, `secureboot`).
    BootUnder {
        firmware: &'a str,
    },
    /// A cold boot with more `builder boot` arguments (`--forward ...`).
    BootWith {
        args: &'a [String],
    },
    SaveAt {
        text: &'a str,
        dir: &'a Path,
    },
    Resume {
        dir: &'a Path,
    },
}

impl Guest {
    pub fn start(
        disk: &Path,
        seed: &Path,
        extra: Option<&Path>,
        serial: &Path,
        timeout: Duration,
    ) -> Guest {
        Guest::start_as(Start::Boot, disk, seed, extra, serial, timeout)
    }

    /// Starts `builder boot` as `how` says. A resume returns once the guest
    /// runs again, so a test's clock starts where the saved one stopped.
    pub fn start_as(
        how: Start,
        disk: &Path,
        seed: &Path,
        extra: Option<&Path>,
        serial: &Path,
        timeout: Duration,
    ) -> Guest {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(builder_bin());
        c.current_dir(workspace())
            .arg("boot")
            .arg(disk)
            .arg("--writable")
            .arg("--seed")
            .arg(seed)
            .arg("--serial")
            .arg(serial)
            .arg("--timeout")
            .arg(timeout.as_secs().to_string());
        if let Some(x) = extra {
            c.arg("--disk").arg(x);
        }
        // One virtual CPU unless the caller asks otherwise: the first-boot tests run two
        // guests at once on two cores, and two 2-vCPU guests there boot much slower than two
        // 1-vCPU ones (measured: 170 s against 126 s to the login prompt; alone, 2 vCPUs
        // take 89 s and 1 takes 111 s, so a guest that runs alone passes `--cpus 2`).
        let own_cpus =
            matches!(&how, Start::BootWith { args } if args.iter().any(|a| a == "--cpus"));
        if !own_cpus {
            c.arg("--cpus").arg("1");
        }
        match how {
            Start::Boot => {}
            Start::BootUnder { firmware } => {
                c.arg("--firmware").arg(firmware);
            }
            Start::BootWith { args } => {
                c.args(args);
            }
            Start::SaveAt { text, dir } => {
                c.arg("--until").arg(text).arg("--save-state").arg(dir);
            }
            Start::Resume { dir } => {
                c.arg("--resume").arg(dir);
            }
        }
        c.process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("starting builder boot");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut g = Guest {
            child,
            serial: serial.to_path_buf(),
            started: Instant::now(),
            stderr,
            reader: Some(reader),
        };
        if let Start::Resume { .. } = how {
            let t = Instant::now();
            while !g.stderr.lock().unwrap().contains("builder boot: resumed") {
                let exited = g.child.try_wait().unwrap().is_some();
                assert!(
                    !exited && t.elapsed() < Duration::from_secs(300),
                    "the guest did not resume: {}",
                    g.stderr.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            g.started = Instant::now();
        }
        g
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until `text` appears on the console; None at the timeout or
    /// when the guest stops first.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.console().contains(text) {
                return Some(self.started.elapsed());
            }
            if self.child.try_wait().unwrap().is_some() {
                return self
                    .console()
                    .contains(text)
                    .then(|| self.started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Cuts the power: kills `builder boot` and QEMU at once, and waits
    /// until QEMU (not our child, so not reaped by us) is gone and has let
    /// go of the disk.
    pub fn power_cut(mut self) {
        crate::kill_group(&self.child);
        let _ = self.child.wait();
        let serial = self.serial.to_string_lossy().into_owned();
        let t = Instant::now();
        while processes_mentioning(&serial) > 0 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "QEMU outlived its power cut"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `texts` show on the guest's console in this order, each
    /// after the one before. False when the guest stopped or `timeout`
    /// passed first. It looks every 10 ms, so a test can cut the power close
    /// to that moment.
    pub fn wait_console(&mut self, texts: &[&str], timeout: Duration) -> bool {
        let t = Instant::now();
        let mut seen = Vec::new();
        let mut log = None;
        while t.elapsed() < timeout {
            if log.is_none() {
                log = std::fs::File::open(&self.serial).ok();
            }
            if let Some(f) = log.as_mut() {
                let _ = std::io::Read::read_to_end(f, &mut seen);
                let text = String::from_utf8_lossy(&seen);
                let mut at = Some(0);
                for want in texts {
                    at = at.and_then(|a| text[a..].find(want).map(|i| a + i + want.len()));
                }
                if at.is_some() {
                    return true;
                }
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits for `builder boot` to return: Ok(exit code) when the guest
    /// powered off (0) or timed out (124).
    pub fn wait(mut self) -> (i32, String) {
        let st = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let err = self.stderr.lock().unwrap().clone();
        (st.code().unwrap_or(-1), err)
    }
}

/// A qcow2 overlay of a qcow2 disk (a saved guest's disk stays as it was,
/// so every resume of its state starts from the same bytes).
pub fn overlay_qcow2(base: &Path, out: &Path) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(out);
    sh(c);
}

/// How many live processes have `text` in their command line.
fn processes_mentioning(text: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(text)
        })
        .count()
}

/// What the guest's report said, decoded.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub boot_id: String,
    pub status: serde_json::Value,
    pub state: serde_json::Value,
    pub join: String,
    pub audit: String,
    pub debian_version: String,
    pub unit: String,
    pub blame: String,
}

fn unb64(s: &str) -> String {
    let mut c = Command::new("base64");
    let mut child = c
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), s.trim().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The last report on a console log.
pub fn last_report(console: &str) -> Option<Report> {
    let start = console.rfind("BPT-BEGIN")?;
    let body = &console[start..];
    body.find("BPT-END")?;
    let field = |k: &str| -> String {
        body.lines()
            .find_map(|l| {
                l.trim_start_matches('\r')
                    .strip_prefix(&format!("BPT-{k} "))
            })
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let json = |k: &str| serde_json::from_str(&unb64(&field(k))).unwrap_or(serde_json::Value::Null);
    Some(Report {
        boot_id: field("BOOTID"),
        status: json("STATUS"),
        state: json("STATE"),
        join: unb64(&field("JOIN")),
        audit: unb64(&field("AUDIT")),
        debian_version: field("DEBIAN-VERSION"),
        unit: unb64(&field("UNIT")),
        blame: unb64(&field("BLAME")),
    })
}

/// How many times a kernel started on this console.
pub fn boots(console: &str) -> usize {
    console.matches("Linux version ").count()
}
