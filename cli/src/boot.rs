//! `bulkhead boot`: the VMM on its own, for kernels and initrds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use bulkhead_vmm::boot::pvm::PvmCompat;
use bulkhead_vmm::builder::RestoreConfig;
use bulkhead_vmm::config::{
    ConsoleOutput, DiskConfig, FsConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_MEM_MIB,
    FS_TAG_MAX,
};
use bulkhead_vmm::devices::virtio::net::Tap;
use bulkhead_vmm::vmm::{SnapshotHandle, VmExit, Vmm};

use crate::bench::restore::RestoreRecord;
use crate::run::record::monotonic_ns;
use crate::template::ready::ReadyWatcher;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PvmMode {
    Auto,
    On,
    Off,
}

#[derive(Args)]
pub struct BootArgs {
    /// Uncompressed ELF kernel (vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (uncompressed newc cpio) to load.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Appended to bulkhead's own kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
    mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Raw disk image, attached in order as vda, vdb, ...; `,ro` for read-only.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<String>,
    /// virtio-fs device with this tag, served by the vhost-user backend
    /// listening on SOCKET (e.g. a virtiofsd); no SOCKET: an empty slot.
    #[arg(long = "share", value_name = "TAG[=SOCKET]")]
    shares: Vec<String>,
    /// virtio-net on the TAP named TAP (created in bulkhead's network
    /// namespace if it does not exist), the guest's eth0 showing MAC
    /// (default: one derived from the TAP name). No TAP (`--net =MAC`): a
    /// NIC with no cable, which a restore can plug a TAP into.
    #[arg(long, value_name = "TAP[=MAC]")]
    net: Option<String>,
    #[command(flatten)]
    vsock: VsockArgs,
    /// PVM host compatibility (feature masks, syscall fix): auto-detected by default.
    #[arg(long, value_enum, default_value_t = PvmMode::Auto)]
    pvm_compat: PvmMode,
    /// Snapshot the VM into this directory (then end it) once the console
    /// has printed the `--snapshot-when` text.
    #[arg(long, requires = "snapshot_when", value_name = "DIR")]
    snapshot_to: Option<PathBuf>,
    /// Console text that triggers the snapshot.
    #[arg(long, requires = "snapshot_to", value_name = "TEXT")]
    snapshot_when: Option<String>,
}

/// The guest's vsock device, for a boot or a restore.
#[derive(Args)]
pub struct VsockArgs {
    /// Host Unix socket for the guest's vsock device (Firecracker's hybrid vsock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u32,
}

impl VsockArgs {
    fn config(&self) -> Option<VsockConfig> {
        self.vsock_uds.clone().map(|uds_path| VsockConfig {
            cid: self.vsock_cid,
            uds_path,
        })
    }
}

/// `bulkhead restore`: continue a VM snapshotted by `boot --snapshot-to`.
#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot directory (holding `state` and `memory`).
    snapshot: PathBuf,
    /// Backing for the snapshot's block slots, in order; `,ro` for read-only.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<String>,
    /// The backend socket for each of the snapshot's virtio-fs slots, in
    /// order ("" leaves a slot unconnected).
    #[arg(long = "share", value_name = "SOCKET")]
    shares: Vec<PathBuf>,
    /// The TAP to plug into the snapshot's virtio-net slot, and the MAC
    /// its config space now shows (default: one derived from the TAP
    /// name). Without it the slot has no TAP and keeps its MAC.
    #[arg(long, value_name = "TAP[=MAC]")]
    net: Option<String>,
    #[command(flatten)]
    vsock: VsockArgs,
    /// Write when the restore began and when the vCPUs were started, as
    /// JSON (for `bulkhead bench`).
    #[arg(long, hide = true, value_name = "FILE")]
    timings_json: Option<PathBuf>,
    /// End the VM as soon as its vCPUs run (for `bulkhead bench`).
    #[arg(long, hide = true)]
    stop_after_start: bool,
}

/// The VMM's stdout as an unbuffered writer, so console bytes appear as
/// the guest writes them.
fn raw_stdout() -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stdout")?;
    Ok(std::fs::File::from(fd))
}

pub fn parse_disk(spec: &str) -> anyhow::Result<DiskConfig> {
    let (path, opts) = match spec.split_once(',') {
        Some((p, o)) => (p, Some(o)),
        None => (spec, None),
    };
    let read_only = match opts {
        None => false,
        Some("ro") => true,
        Some("rw") => false,
        Some(other) => anyhow::bail!("--disk {spec}: unknown option {other:?} (expected ro or rw)"),
    };
    anyhow::ensure!(!path.is_empty(), "--disk needs a path");
    Ok(DiskConfig {
        path: path.into(),
        read_only,
    })
}

pub fn parse_share(spec: &str) -> anyhow::Result<FsConfig> {
    let (tag, socket) = match spec.split_once('=') {
        Some((t, s)) => (t, Some(PathBuf::from(s))),
        None => (spec, None),
    };
    anyhow::ensure!(
        !tag.is_empty() && tag.len() <= FS_TAG_MAX && !tag.contains('\0'),
        "--share {spec}: the tag must be 1 to {FS_TAG_MAX} bytes"
    );
    Ok(FsConfig {
        tag: tag.to_string(),
        socket,
    })
}

/// `--net TAP[=MAC]`: opens the TAP (none for an empty name).
pub fn parse_net(spec: &str) -> anyhow::Result<NetConfig> {
    let (name, mac) = match spec.split_once('=') {
        Some((n, m)) => (n, Some(m)),
        None => (spec, None),
    };
    let mac = match mac {
        Some(m) => parse_mac(m).with_context(|| format!("--net {spec}"))?,
        None => default_mac(name),
    };
    let tap = if name.is_empty() {
        None
    } else {
        Some(Tap::open(name).with_context(|| format!("--net {spec}"))?)
    };
    Ok(NetConfig { tap, mac })
}

/// `aa:bb:cc:dd:ee:ff`, a unicast address.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    anyhow::ensure!(
        parts.len() == 6 && parts.iter().all(|p| p.len() == 2),
        "MAC address {s:?} is not six hex bytes like 02:00:00:00:00:01"
    );
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(&parts) {
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| anyhow::anyhow!("MAC address {s:?} is not six hex bytes"))?;
    }
    anyhow::ensure!(
        mac[0] & 1 == 0 && mac != [0; 6],
        "MAC address {s} is not a unicast address"
    );
    Ok(mac)
}

/// A locally administered unicast MAC, stable for a TAP name (FNV-1a),
/// so a boot and a restore on the same TAP agree.
fn default_mac(tap: &str) -> [u8; 6] {
    let h = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let b = h.to_le_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

pub fn run(args: BootArgs) -> anyhow::Result<ExitCode> {
    let mut config = VmConfig::new(args.kernel);
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.mem_mib = args.mem_mib;
    config.vcpus = args.vcpus;
    config.console_input = true;
    config.pvm_compat = match args.pvm_compat {
        PvmMode::Auto => PvmCompat::Auto,
        PvmMode::On => PvmCompat::On,
        PvmMode::Off => PvmCompat::Off,
    };
    config.disks = args
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<anyhow::Result<_>>()?;
    config.shares = args
        .shares
        .iter()
        .map(|s| parse_share(s))
        .collect::<anyhow::Result<_>>()?;
    config.vsock = args.vsock.config();
    config.net = args.net.as_deref().map(parse_net).transpose()?;
    config.seccomp = crate::confine::vmm_filters()?;
    let (Some(dir), Some(when)) = (args.snapshot_to, args.snapshot_when) else {
        let vmm = bulkhead_vmm::builder::build(config).context("cannot start the VM")?;
        run_confined(vmm).context("the VM failed")?;
        return Ok(ExitCode::SUCCESS);
    };
    if dir.exists() {
        anyhow::bail!("--snapshot-to {}: already exists", dir.display());
    }
    let handle: Arc<OnceLock<SnapshotHandle>> = Arc::new(OnceLock::new());
    let trigger = handle.clone();
    let target = dir.clone();
    config.console = ConsoleOutput::Writer(Box::new(ReadyWatcher::new(
        raw_stdout()?,
        when.into_bytes(),
        move || {
            if let Some(h) = trigger.get() {
                h.snapshot_to(target);
            }
        },
    )));
    let vmm = bulkhead_vmm::builder::build(config).context("cannot start the VM")?;
    let _ = handle.set(vmm.snapshot_handle());
    match run_confined(vmm) {
        Ok(VmExit::Snapshotted) => {
            eprintln!("bulkhead: snapshot written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => anyhow::bail!("the VM ended before it printed the snapshot text"),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e).context("the VM failed")
        }
    }
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let disks = args
        .disks
        .iter()
        .map(|d| parse_disk(d).map(Some))
        .collect::<anyhow::Result<_>>()?;
    let config = RestoreConfig {
        snapshot_dir: args.snapshot,
        console: ConsoleOutput::Stdout,
        disks,
        vsock: args.vsock.config(),
        shares: args
            .shares
            .into_iter()
            .map(|s| (!s.as_os_str().is_empty()).then_some(s))
            .collect(),
        net: args.net.as_deref().map(parse_net).transpose()?,
        seccomp: crate::confine::vmm_filters()?,
    };
    let begin_ns = monotonic_ns();
    let vmm = bulkhead_vmm::builder::restore(config).context("cannot restore the VM")?;
    let restored_ns = monotonic_ns();
    if args.stop_after_start {
        // Seen by the event loop once `run` has started the vCPUs.
        vmm.stop_handle().stop();
    }
    let vcpus_started_ns = monotonic_ns();
    run_confined(vmm).context("the VM failed")?;
    if let Some(path) = &args.timings_json {
        let record = RestoreRecord {
            begin_ns,
            restored_ns,
            vcpus_started_ns,
        };
        record.write(path)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the VM on a thread of its own: the thread that runs it is confined
/// by the VMM's filter, and this one still has reporting to do after.
fn run_confined(vmm: Vmm) -> anyhow::Result<VmExit> {
    let thread = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || vmm.run())
        .context("cannot start the VMM thread")?;
    match thread.join() {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("the VMM thread panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_specs() {
        assert_eq!(
            parse_mac("02:aB:00:10:ff:09").unwrap(),
            [2, 0xab, 0, 0x10, 0xff, 9]
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0g",
            "01:00:00:00:00:01",
            "0:0:0:0:0:0",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let slot = parse_net("=02:00:00:00:00:07").unwrap();
        assert!(slot.tap.is_none());
        assert_eq!(slot.mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(parse_net("").unwrap().mac, default_mac(""));
        assert_eq!(default_mac("tap0"), default_mac("tap0"));
        assert_ne!(default_mac("tap0"), default_mac("tap1"));
        assert_eq!(default_mac("tap0")[0], 2);
        let err = parse_net("tap0=zz").unwrap_err();
        assert!(format!("{err:#}").contains("--net tap0=zz"), "{err:#}");
        let err = parse_net("no/slashes").unwrap_err();
        assert!(format!("{err:#}").contains("no/slashes"), "{err:#}");
    }
}
