//! Command-line arguments of the `builder` binary. Only argument shapes live
//! here; each subcommand's behaviour lives in its own module.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "builder",
    version = crate::VERSION,
    about = "Build, verify and boot node images; render cloud-init user-data"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from a spec: a shipped spec by name (debian-12, the default) or a YAML file
    Build(BuildArgs),
    /// Re-hash every artifact of a build against its manifest
    Verify(VerifyArgs),
    /// Boot a disk image under QEMU with the serial console captured
    Boot(BootArgs),
    /// Render cloud-init user-data for a cloud provider
    Render(RenderArgs),
    /// Make a NoCloud `cidata` seed volume
    Seed(SeedArgs),
    /// Pack the static updater agent into an OCI image archive (no daemon, no network)
    AgentImage(AgentImageArgs),
    /// Internal: what QEMU runs for each guest connection of a `boot --forward` rule
    #[command(hide = true)]
    Relay(RelayArgs),
}

#[derive(Args, Debug)]
pub struct RelayArgs {
    /// The host's loopback port to connect to
    pub port: u16,
}

#[derive(Args, Debug)]
pub struct AgentImageArgs {
    /// The static bootpatch-updater binary (scripts/build-agent)
    #[arg(long)]
    pub agent: PathBuf,
    /// The archive to write (an OCI layout in a tar); its digest goes to FILE.digest
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The tag recorded in the archive's index (default: the version)
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A shipped spec by name (debian-12, debian-13, ubuntu-24.04) or a spec file (YAML);
    /// default: debian-12
    pub spec: Option<PathBuf>,
    /// Output folder, made whole or not at all (default: out/NAME)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Comma-separated list of outputs (raw,qcow2,vhd,ova,gcp)
    #[arg(long, value_delimiter = ',')]
    pub formats: Option<Vec<String>>,
    /// Rebuild from packages.lock and the local package cache, without network
    #[arg(long)]
    pub locked: bool,
    /// Print only errors and the final summary
    #[arg(long)]
    pub quiet: bool,
    /// Print one JSON event per line (steps, hygiene, done) instead of progress
    #[arg(long)]
    pub json: bool,
    /// The static x86-64 bootpatch binary to bake in (default: `bootpatch` beside this
    /// builder, else built by scripts/build-bootpatch when run inside the source tree)
    #[arg(long)]
    pub bootpatch: Option<PathBuf>,
    /// Package cache folder (default: $BUILDER_CACHE or ~/.cache/bootpatch-builder)
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// packages.lock to build from with --locked (default: OUT/packages.lock)
    #[arg(long)]
    pub lock: Option<PathBuf>,
    /// Scratch folder for the root file system (default: /dev/shm)
    #[arg(long)]
    pub workdir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A build's output folder (holding manifest.json)
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct BootArgs {
    /// The disk to boot (raw, qcow2 or vhd, by its extension)
    pub disk: PathBuf,
    /// A NoCloud seed volume (builder seed), attached read-only
    #[arg(long, value_name = "ISO")]
    pub seed: Option<PathBuf>,
    /// Another disk to attach (may be repeated)
    #[arg(long = "disk", value_name = "EXTRA")]
    pub extra_disks: Vec<PathBuf>,
    /// Seconds before the guest is stopped (exit code 124)
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Write the serial console here (default: to stdout)
    #[arg(long, value_name = "FILE")]
    pub serial: Option<PathBuf>,
    /// Stop the guest and succeed once the serial console shows this text
    #[arg(long)]
    pub until: Option<String>,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Virtual CPUs. Under TCG each is a host thread: guests that together have more
    /// virtual CPUs than the host has cores run much slower than their share (a vCPU
    /// waits on one whose thread is not running), so give parallel guests one each
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Keep what the guest writes to DISK (default: changes are discarded;
    /// use an overlay, e.g. `qemu-img create -f qcow2 -b disk.raw -F raw`)
    #[arg(long)]
    pub writable: bool,
    /// With --until and --writable: when the text shows, pause the guest and
    /// save its running state (memory, devices, firmware variables) into
    /// this folder, then stop. The state belongs to DISK as the guest left
    /// it: resume it on DISK unchanged or on an overlay of it
    #[arg(long, value_name = "DIR", requires_all = ["until", "writable"])]
    pub save_state: Option<PathBuf>,
    /// Resume a guest saved with --save-state, instead of booting (DISK must
    /// hold what it held when the state was saved)
    #[arg(long, value_name = "DIR", conflicts_with = "save_state")]
    pub resume: Option<PathBuf>,
    /// bios: SeaBIOS; uefi: OVMF; secureboot: OVMF with Secure Boot enforced
    /// and Microsoft's keys enrolled (q35 with SMM)
    #[arg(long, value_enum, default_value_t = crate::boot::Firmware::Uefi)]
    pub firmware: crate::boot::Firmware,
    /// Give the guest a user-mode network restricted to this: 10.0.2.100:GUEST_PORT
    /// reaches the host's 127.0.0.1:HOST_PORT (may be repeated; default: no network)
    #[arg(long, value_name = "GUEST_PORT:HOST_PORT")]
    pub forward: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// aws, azure, gcp, vsphere, openstack or nocloud
    #[arg(long)]
    pub provider: String,
    /// A YAML file of template values
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,
    /// key=value, may be repeated
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// Write the user-data here (default: stdout)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// For images without bootpatch: download it from this URL on first boot
    #[arg(long, value_name = "URL")]
    pub bootpatch_url: Option<String>,
    /// The SHA-256 the downloaded bootpatch must have (with --bootpatch-url)
    #[arg(long, value_name = "HEX")]
    pub bootpatch_sha256: Option<String>,
    /// For images without bootpatch: embed this binary in the user-data
    #[arg(long, value_name = "FILE")]
    pub embed_bootpatch: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SeedArgs {
    /// The user-data file (e.g. from builder render)
    #[arg(long, value_name = "FILE")]
    pub user_data: PathBuf,
    /// The meta-data file (default: an instance id and host name made for it)
    #[arg(long, value_name = "FILE")]
    pub meta_data: Option<PathBuf>,
    /// A network-config file (version 2)
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    /// The seed volume to write (ISO 9660, label cidata)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}
