//! `builder build [SPEC] [--out DIR] [--formats LIST] [--locked]`: the whole
//! image build as named steps. Output appears whole or not at all: every
//! artifact is made in a hidden sibling folder that is renamed into place at
//! the end; a failed step names itself, the failing command and its stderr.

use crate::cli::BuildArgs;
use crate::disk::{self, Layout};
use crate::formats::{self, Artifact};
use crate::lock::{self, Lock};
use crate::manifest::{self, Manifest};
use crate::progress::{Mode, Progress};
use crate::rootfs::{self, Origin};
use crate::spec::{self, Format};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The source tree this builder was built from, when the builder runs
/// inside it (the working directory is in it) and it is still there.
fn source_tree() -> Option<PathBuf> {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .ok()?;
    let cwd = std::env::current_dir().ok()?.canonicalize().ok()?;
    (cwd.starts_with(&tree) && tree.join("scripts/build-bootpatch").is_file()).then_some(tree)
}

/// Where the bootpatch to bake in comes from.
enum BootpatchFrom {
    File(PathBuf),
    /// Built by the tree's scripts/build-bootpatch.
    SourceTree(PathBuf),
}

/// The bootpatch to bake in: `--bootpatch`, else `bootpatch` installed
/// beside this builder, else (inside the source tree only) a fresh build by
/// scripts/build-bootpatch. Checked before any work starts.
fn locate_bootpatch(given: Option<&Path>) -> Result<BootpatchFrom> {
    if let Some(b) = given {
        check_bootpatch(b)?;
        return Ok(BootpatchFrom::File(b.to_path_buf()));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("bootpatch")));
    let tree = source_tree();
    if let Some(b) = beside.filter(|b| b.is_file()) {
        match (check_bootpatch(&b), &tree) {
            (Ok(()), _) => return Ok(BootpatchFrom::File(b)),
            // In the source tree, target/*/bootpatch may be a plain (dynamic)
            // cargo build: build the static one instead.
            (Err(_), Some(_)) => {}
            (Err(e), None) => return Err(e.context("the bootpatch installed beside this builder")),
        }
    }
    match tree {
        Some(tree) => Ok(BootpatchFrom::SourceTree(tree)),
        None => bail!(
            "no bootpatch binary to bake in: pass --bootpatch FILE (a static x86-64 build, \
             e.g. from scripts/build-bootpatch), install `bootpatch` beside this builder ({}), \
             or run the builder inside its source tree, which builds it",
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.display().to_string()))
                .unwrap_or_else(|| "?".into())
        ),
    }
}

/// Refuses a bootpatch that cannot run on the node: not an x86-64 ELF
/// executable, or dynamically linked (the image carries no Rust runtime
/// libraries, and bootpatch must run before anything else is repaired).
pub fn check_bootpatch(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = Vec::new();
    fs::File::open(path)
        .with_context(|| format!("--bootpatch {}", path.display()))?
        .take(1 << 16)
        .read_to_end(&mut head)
        .with_context(|| format!("--bootpatch {}: reading", path.display()))?;
    let bad = |why: &str| anyhow::anyhow!("--bootpatch {}: {why}", path.display());
    if head.len() < 64 || &head[0..4] != b"\x7fELF" {
        return Err(bad("not an ELF executable"));
    }
    if head[4] != 2 || head[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let machine = u16_at(18);
    if machine != 62 {
        return Err(bad(&format!(
            "built for ELF machine {machine}, not x86-64 (62)"
        )));
    }
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 4 > head.len() {
            return Err(bad("program headers beyond the first 64 KiB"));
        }
        // PT_INTERP: asks for a dynamic loader.
        if u32::from_le_bytes(head[at..at + 4].try_into().unwrap()) == 3 {
            return Err(bad(
                "dynamically linked (it names a program interpreter); build it static, \
                 as scripts/build-bootpatch does",
            ));
        }
    }
    Ok(())
}

pub fn run(args: BuildArgs) -> Result<i32> {
    let mode = if args.json {
        Mode::Json
    } else if args.quiet {
        Mode::Quiet
    } else {
        Mode::Human
    };
    let p = Progress::new(mode);
    match build(&args, &p) {
        Ok(done) => {
            match mode {
                Mode::Json => p.json(json!({
                    "event": "done",
                    "out": done.out_dir,
                    "seconds": p.elapsed().as_secs_f64(),
                    "artifacts": done.manifest.artifacts,
                })),
                Mode::Human => {
                    eprintln!(
                        "built {} in {:.1}s → {}",
                        done.manifest.image,
                        p.elapsed().as_secs_f64(),
                        done.out_dir.display()
                    );
                    for a in &done.manifest.artifacts {
                        eprintln!("  {:<12} {:>14} bytes  {}", a.file, a.size, a.sha256);
                    }
                }
                Mode::Quiet => {}
            }
            Ok(0)
        }
        Err(e) => {
            if mode == Mode::Json {
                p.json(json!({"event": "failed", "error": format!("{e:#}")}));
            }
            Err(e)
        }
    }
}

#[derive(Debug)]
pub struct Built {
    pub out_dir: PathBuf,
    pub manifest: Manifest,
}

/// Removes a folder tree when dropped (scratch and partial output).
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Never delete through a mount a failed mmdebstrap hook left behind.
            if let Some(m) = mount_below(&p) {
                eprintln!(
                    "builder: leaving {} in place: {m} is still mounted",
                    p.display()
                );
                return;
            }
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// The first mount point at or below `dir`, from /proc/self/mountinfo.
fn mount_below(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|t| Path::new(t).starts_with(&dir))
        .map(str::to_string)
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Removes leftovers of builds that were killed (their pid is gone).
fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix) {
            if !pid_alive(pid) && mount_below(&e.path()).is_none() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn build(args: &BuildArgs, p: &Progress) -> Result<Built> {
    let pid = std::process::id();
    // ---- spec and inputs: everything checked before anything is written.
    let mut bootpatch_from = None;
    let (loaded, formats, lock_in, sources, epoch, out_dir) = p.step("spec", || {
        let mut loaded = spec::resolve(args.spec.as_deref())?;
        if loaded.spec.bake_bootpatch {
            bootpatch_from = Some(locate_bootpatch(args.bootpatch.as_deref())?);
        }
        if let Some(why) = &loaded.spec.not_built_here {
            bail!("{}: this stream is not built here: {why}", loaded.path);
        }
        if let Some(list) = &args.formats {
            loaded.spec.outputs = list
                .iter()
                .map(|f| Format::parse(f))
                .collect::<Result<_>>()?;
            spec::validate(&loaded.spec)
                .with_context(|| format!("{}: with --formats", loaded.path))?;
        }
        let formats = loaded.spec.outputs.clone();
        let out_dir = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("out").join(&loaded.spec.name));
        let lock_in = if args.locked {
            let lp = args
                .lock
                .clone()
                .unwrap_or_else(|| out_dir.join(lock::FILE_NAME));
            let l =
                Lock::load(&lp).context("--locked needs the packages.lock of an earlier build")?;
            if l.image != loaded.spec.name || l.suite != loaded.spec.os.suite {
                bail!(
                    "{} was made for {} ({}), not {} ({})",
                    lp.display(),
                    l.image,
                    l.suite,
                    loaded.spec.name,
                    loaded.spec.os.suite
                );
            }
            Some(l)
        } else {
            None
        };
        let sources = match &lock_in {
            Some(l) => l.sources.clone(),
            None => {
                let host = crate::hostapt::read_host(Path::new("/"));
                rootfs::resolve_sources(&loaded.spec, &host)?
            }
        };
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
            Err(_) => lock_in
                .as_ref()
                .map(|l| l.source_date_epoch)
                .unwrap_or_else(now),
        };
        Ok((loaded, formats, lock_in, sources, epoch, out_dir))
    })?;
    let spec = &loaded.spec;
    let name = spec.name.clone();
    let cache_root = args.cache.clone().unwrap_or_else(lock::default_cache);
    let cache = cache_root.join("debs");
    let apt_lists = cache_root.join("apt-lists");

    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let partial_prefix = format!(".{name}.partial-");
    remove_stale(&parent, &partial_prefix);
    let staging = parent.join(format!("{partial_prefix}{pid}"));
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut staging_guard = Cleanup(Some(staging.clone()));

    let work_base = args.workdir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    remove_stale(&work_base, "bootpatch-builder-");
    let work = work_base.join(format!("bootpatch-builder-{pid}"));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _work_guard = Cleanup(Some(work.clone()));
    let root = work.join("root");

    // ---- bootpatch binary
    let bootpatch_bin = p.step("bootpatch binary", || match bootpatch_from.take() {
        Some(BootpatchFrom::File(b)) => Ok(b),
        Some(BootpatchFrom::SourceTree(tree)) => {
            let out = crate::cmd::run(&mut std::process::Command::new(
                tree.join("scripts/build-bootpatch"),
            ))?;
            Ok(PathBuf::from(out.trim()))
        }
        // bakeBootpatch: false
        None => Ok(PathBuf::new()),
    })?;

    // ---- root file system
    p.step("root file system (mmdebstrap)", || {
        match &lock_in {
            None => rootfs::mmdebstrap(
                spec,
                &sources,
                &Origin::Network { cache: &cache },
                rootfs::Tuning {
                    initramfs_once: true,
                    apt_lists: Some(&apt_lists),
                },
                &root,
                epoch,
                p,
            ),
            Some(l) => {
                // mmdebstrap's automount hook recreates this path inside the
                // root: /var/tmp is emptied by hygiene, so no host path leaks
                // in. (Not below /dev/shm: mmdebstrap mounts its own /dev.)
                let repo = PathBuf::from(format!("/var/tmp/bootpatch-builder-repo-{pid}"));
                remove_stale(Path::new("/var/tmp"), "bootpatch-builder-repo-");
                p.status("checking the package cache against packages.lock");
                lock::make_local_repo(l, &cache, &repo)?;
                let r = rootfs::mmdebstrap(
                    spec,
                    &sources,
                    &Origin::Locked {
                        repo: &repo,
                        packages: l.packages.iter().map(|p| p.name.clone()).collect(),
                    },
                    rootfs::Tuning {
                        initramfs_once: true,
                        apt_lists: None,
                    },
                    &root,
                    epoch,
                    p,
                );
                let _ = fs::remove_dir_all(&repo);
                r
            }
        }
    })?;

    let loader = spec.boot.loader;
    let layout = Layout::new(
        &name,
        spec.disk.size.0,
        spec.disk.esp_size.0,
        loader == spec::Loader::Grub,
    );
    let root_fs_uuid = disk::derived_uuid(&name, "root-fs");

    // ---- node files, lock, hygiene
    let (lock_out, point_release, kernel, grub, drivers, root_paths) =
        p.step("node files and hygiene", || {
            rootfs::install_node_files(
                &root,
                &rootfs::NodeFiles {
                    bootpatch_binary: spec.bake_bootpatch.then_some(bootpatch_bin.as_path()),
                    firstboot_unit: crate::shipped::FIRSTBOOT_UNIT,
                    bootpatch_config: &loaded.bootpatch_config,
                    sources: &sources,
                    root_partuuid: &layout.root.guid,
                    esp_partuuid: &layout.esp.guid,
                    loader,
                },
            )?;
            let installed = rootfs::installed_packages(&root)?;
            let lock_out = match &lock_in {
                Some(l) => {
                    rootfs::check_against_lock(&installed, l)?;
                    l.clone()
                }
                None => lock::make(
                    &installed,
                    &cache,
                    &name,
                    &spec.os.suite,
                    &spec.architecture,
                    epoch,
                    &sources,
                )?
                .with_auto_installed(&rootfs::auto_installed(&root)?),
            };
            rootfs::write_auto_installed(&root, &lock_out.auto_installed())?;
            let cleaned = rootfs::hygiene(&root, &spec.hygiene)?;
            if p.mode() == Mode::Json {
                p.json(json!({"event": "hygiene", "actions": cleaned}));
            }
            let point_release = rootfs::point_release(&root)?;
            let kernel = rootfs::newest_kernel(&root)?;
            if !root.join(format!("boot/initrd.img-{kernel}")).is_file() {
                bail!("the root file system has no /boot/initrd.img-{kernel}: update-initramfs did not run for kernel {kernel}");
            }
            let grub = match loader {
                spec::Loader::Grub => Some(crate::grub::prepare(
                    &root,
                    &crate::grub::Setup {
                        family: spec.os.family,
                        kernel: &kernel,
                        root_fs_uuid: &root_fs_uuid,
                        root_partuuid: &layout.root.guid,
                        cmdline: &spec.boot.cmdline,
                        title: &title(spec),
                    },
                )?),
                spec::Loader::SystemdBoot => None,
            };
            let drivers = manifest::Drivers {
                virtio_scsi: rootfs::kernel_has_driver(&root, &kernel, "virtio_scsi")?,
                gve: rootfs::kernel_has_driver(&root, &kernel, "gve")?,
            };
            let paths = rootfs::walk(&root)?;
            rootfs::clamp_times(&root, &paths, epoch)?;
            Ok((lock_out, point_release, kernel, grub, drivers, paths))
        })?;

    // ---- disk
    let raw = staging.join(Format::Raw.file_name());
    p.step("disk (GPT, ESP, ext4)", || {
        let (esp, bios) = match grub {
            Some(g) => (
                disk::EspContent { files: g.esp },
                Some(disk::BiosStage {
                    boot_img: g.boot_img,
                    core_img: g.core_img,
                }),
            ),
            None => (
                disk::EspContent::systemd_boot(
                    root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi"),
                    root.join(format!("boot/vmlinuz-{kernel}")),
                    root.join(format!("boot/initrd.img-{kernel}")),
                    &name,
                    &title(spec),
                    &format!(
                        "root=PARTUUID={} rootfstype=ext4 {}",
                        layout.root.guid, spec.boot.cmdline
                    ),
                ),
                None,
            ),
        };
        disk::build(
            &disk::DiskInputs {
                path: &raw,
                layout: &layout,
                root_dir: &root,
                root_paths: &root_paths,
                esp: &esp,
                bios: bios.as_ref(),
                image: &name,
                epoch,
                work: &work,
            },
            p,
        )
    })?;
    // The root tree is no longer needed: free the memory before the formats.
    let _ = fs::remove_dir_all(&root);

    // ---- formats
    let mut artifacts = p.step("formats", || {
        let uuid = disk::guid_bytes(&disk::derived_uuid(&name, "vhd"))?;
        formats::produce_all(
            &staging,
            &formats,
            &formats::Meta {
                image: &name,
                title: &title(spec),
                epoch,
                vhd_uuid: uuid,
                secure_boot: spec.boot.secure_boot(),
            },
            p,
        )
    })?;
    if !formats.contains(&Format::Raw) {
        fs::remove_file(&raw)?;
    }

    // ---- manifest
    let manifest = p.step("manifest", || {
        let lock_text = lock_out.to_text();
        fs::write(staging.join(lock::FILE_NAME), &lock_text)?;
        artifacts.push(Artifact {
            file: lock::FILE_NAME.into(),
            format: "packages-lock".into(),
            size: lock_text.len() as u64,
            sha256: crate::hash::hex(&crate::hash::sha256_bytes(lock_text.as_bytes())),
        });
        let m = Manifest {
            manifest_version: 1,
            image: name.clone(),
            spec: manifest::SpecRef {
                path: loaded.path.clone(),
                sha256: loaded.sha256.clone(),
                text: loaded.text.clone(),
            },
            os: manifest::OsInfo {
                family: format!("{:?}", spec.os.family).to_lowercase(),
                stream: spec.os.stream.clone(),
                suite: spec.os.suite.clone(),
                point_release: point_release.clone(),
            },
            kernel: kernel.clone(),
            package_count: lock_out.packages.len(),
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
            build_time: manifest::rfc3339(now()),
            source_date_epoch: epoch,
            locked: lock_in.is_some(),
            disk: manifest::DiskInfo {
                size: layout.size,
                disk_guid: layout.disk_guid.clone(),
                esp_partuuid: layout.esp.guid.clone(),
                root_partuuid: layout.root.guid.clone(),
                root_fs_uuid: root_fs_uuid.clone(),
            },
            boot: manifest::BootInfo::new(loader, spec.boot.secure_boot(), &drivers),
            artifacts: artifacts.clone(),
            timings: p
                .timings()
                .iter()
                .map(|(s, d)| (s.clone(), (d.as_secs_f64() * 1000.0).round() / 1000.0))
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&m)?;
        text.push('\n');
        fs::write(staging.join(manifest::FILE_NAME), text)?;
        fs::write(
            staging.join(manifest::SUMS_NAME),
            manifest::sums_text(&m.artifacts),
        )?;
        Ok(m)
    })?;

    // ---- publish: one rename makes the whole output appear.
    p.step("publish", || {
        let old = parent.join(format!(".{name}.old-{pid}"));
        if out_dir.exists() {
            fs::rename(&out_dir, &old)
                .with_context(|| format!("moving the previous {} aside", out_dir.display()))?;
        }
        fs::rename(&staging, &out_dir)
            .with_context(|| format!("renaming into {}", out_dir.display()))?;
        let _ = fs::remove_dir_all(&old);
        Ok(())
    })?;
    staging_guard.0 = None;
    Ok(Built { out_dir, manifest })
}

fn title(spec: &spec::Spec) -> String {
    let family = match spec.os.family {
        spec::Family::Debian => "Debian",
        spec::Family::Ubuntu => "Ubuntu",
        spec::Family::Rocky => "Rocky Linux",
    };
    format!("{family} {} ({})", spec.os.stream, spec.os.suite)
}
