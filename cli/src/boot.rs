//! `bulkhead boot`: the VMM on its own, for kernels and initrds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bulkhead_vmm::boot::pvm::PvmCompat;
use bulkhead_vmm::config::{DiskConfig, VmConfig, VsockConfig, DEFAULT_MEM_MIB};
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
    /// Host Unix socket for the guest's vsock device (Firecracker's hybrid vsock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u32,
    /// PVM host compatibility (feature masks, syscall fix): auto-detected by default.
    #[arg(long, value_enum, default_value_t = PvmMode::Auto)]
    pvm_compat: PvmMode,
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
    config.vsock = args.vsock_uds.map(|uds_path| VsockConfig {
        cid: args.vsock_cid,
        uds_path,
    });
    let vmm = bulkhead_vmm::builder::build(config).context("cannot start the VM")?;
    vmm.run().context("the VM failed")?;
    Ok(ExitCode::SUCCESS)
}
