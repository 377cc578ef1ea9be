//! What a VM is made of, as the CLI (or a test) describes it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::boot::pvm::PvmCompat;
use crate::devices::virtio::net::Tap;
use crate::seccomp::ThreadFilters;

pub const DEFAULT_MEM_MIB: u64 = 128;
/// Below this the kernel's early allocations fail in confusing ways.
pub const MIN_MEM_MIB: u64 = 16;
pub const MAX_VCPUS: u8 = 32;

/// Where the guest's serial console goes.
pub enum ConsoleOutput {
    /// The VMM's stdout, unbuffered.
    Stdout,
    /// Any writer (a log file, a pipe, a test's buffer).
    Writer(Box<dyn Write + Send>),
    /// Nowhere.
    Sink,
}

/// A raw disk image attached as virtio-blk, in order: vda, vdb, ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Hybrid vsock: the guest's CID and the host Unix socket it is reached by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u32,
    pub uds_path: PathBuf,
}

/// A virtio-fs device: the tag the guest mounts it by, and the listening
/// vhost-user socket of its backend (a virtiofsd). `None` is an empty slot:
/// the guest sees the device, and a restore of a snapshot of this VM can
/// connect it to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub socket: Option<PathBuf>,
}

/// A virtio-net device on a host TAP, and the MAC address its config
/// space reports (the guest's eth0 starts with it). `tap: None` is an empty
/// slot: the guest sees a NIC with no cable, and a restore of a snapshot of
/// this VM can plug a TAP in.
#[derive(Debug)]
pub struct NetConfig {
    pub tap: Option<Tap>,
    pub mac: [u8; 6],
}

/// The longest virtio-fs tag (the device's config space field).
pub const FS_TAG_MAX: usize = 36;

pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Appended to the VMM's own command line.
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub pvm_compat: PvmCompat,
    pub console: ConsoleOutput,
    /// Forward the VMM's stdin to the serial console.
    pub console_input: bool,
    pub disks: Vec<DiskConfig>,
    /// Block devices with no backing after `disks`: slots a snapshot of
    /// this VM can be given files for at restore.
    pub empty_disk_slots: usize,
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, after the disks and before the vsock. Guest
    /// memory is backed by a shareable memfd when any has a socket.
    pub shares: Vec<FsConfig>,
    /// One virtio-net device, after the shares and before the vsock.
    pub net: Option<NetConfig>,
    /// The VM's threads are confined by these filters; `None` only for
    /// debugging.
    pub seccomp: Option<Arc<ThreadFilters>>,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            mem_mib: DEFAULT_MEM_MIB,
            vcpus: 1,
            pvm_compat: PvmCompat::Auto,
            console: ConsoleOutput::Stdout,
            console_input: false,
            disks: Vec::new(),
            empty_disk_slots: 0,
            vsock: None,
            shares: Vec::new(),
            net: None,
            seccomp: None,
        }
    }
}
