//! What a container's VM is made of, as data: the same spec builds the VM
//! on a thread of this process or, serialised, in the VMM's own jailed
//! process (see `crate::jail`). Descriptors (the console log, the TAP)
//! travel beside it.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bulkhead_vmm::boot::pvm::PvmCompat;
use bulkhead_vmm::builder::{BuildError, RestoreConfig};
use bulkhead_vmm::config::{ConsoleOutput, DiskConfig, FsConfig, NetConfig, VmConfig, VsockConfig};
use bulkhead_vmm::devices::virtio::net::Tap;
use bulkhead_vmm::seccomp::ThreadFilters;
use bulkhead_vmm::vmm::Vmm;
use serde::{Deserialize, Serialize};

use super::console_log::ConsoleLog;
use crate::share;
use crate::template::SHARE_SLOTS;

/// The subdirectory of a run directory holding the VM's sockets (vsock,
/// virtiofsd): all a jailed VMM is given of it, so the rest (the plan, the
/// state, the monitor's control socket) stays out of its sight.
pub const VM_DIR: &str = "vm";

/// Where the guest's state comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Source {
    /// A fresh boot of the kernel.
    Boot {
        kernel: PathBuf,
        initrd: PathBuf,
        mem_mib: u64,
        /// Decided where the host's /sys is in view (a jail has none).
        pvm_compat: bool,
    },
    /// A template's snapshot.
    Restore { snapshot_dir: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    pub source: Source,
    /// Image (read-only), scratch, volumes: vda, vdb, vdc...
    pub disks: Vec<DiskSpec>,
    /// The listening virtiofsd socket of each share, in tag order.
    pub shares: Vec<PathBuf>,
    /// Where the VMM listens for the host's vsock connections.
    pub uds: PathBuf,
    /// The MAC eth0 reports, when the VM has a TAP.
    pub net: Option<NetSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetSpec {
    pub tap_name: String,
    pub mac: [u8; 6],
}

/// The open files a VM's devices write to, handed to whoever builds it.
pub struct VmFiles {
    /// The guest console's log (bounded by [`ConsoleLog`]).
    pub console: File,
    pub tap: Option<Tap>,
}

impl VmFiles {
    fn console(self) -> (ConsoleOutput, Option<Tap>) {
        (
            ConsoleOutput::Writer(Box::new(ConsoleLog::new(self.console))),
            self.tap,
        )
    }
}

impl VmSpec {
    fn vsock(&self) -> VsockConfig {
        VsockConfig {
            cid: 3,
            uds_path: self.uds.clone(),
        }
    }

    fn disks(&self) -> impl Iterator<Item = DiskConfig> + '_ {
        self.disks.iter().map(|d| DiskConfig {
            path: d.path.clone(),
            read_only: d.read_only,
        })
    }

    fn net(&self, tap: Option<Tap>) -> Option<NetConfig> {
        self.net.as_ref().map(|n| NetConfig { tap, mac: n.mac })
    }

    /// The VMM's configuration of this VM, confined by `seccomp`.
    pub fn config(&self, files: VmFiles, seccomp: Option<Arc<ThreadFilters>>) -> Config {
        let (console, tap) = files.console();
        match &self.source {
            Source::Boot {
                kernel,
                initrd,
                mem_mib,
                pvm_compat,
            } => {
                let mut config = VmConfig::new(kernel);
                config.initrd = Some(initrd.clone());
                config.mem_mib = *mem_mib;
                config.pvm_compat = if *pvm_compat {
                    PvmCompat::On
                } else {
                    PvmCompat::Off
                };
                config.console = console;
                config.vsock = Some(self.vsock());
                config.disks = self.disks().collect();
                config.shares = self
                    .shares
                    .iter()
                    .enumerate()
                    .map(|(i, socket)| FsConfig {
                        tag: share::tag(i),
                        socket: Some(socket.clone()),
                    })
                    .collect();
                config.net = self.net(tap);
                config.seccomp = seccomp;
                Config::Boot(Box::new(config))
            }
            // The container's disks and shares go in the template's slots.
            Source::Restore { snapshot_dir } => Config::Restore(Box::new(RestoreConfig {
                snapshot_dir: snapshot_dir.clone(),
                console,
                disks: self.disks().map(Some).collect(),
                vsock: Some(self.vsock()),
                shares: (0..SHARE_SLOTS)
                    .map(|i| self.shares.get(i).cloned())
                    .collect(),
                net: self.net(tap),
                seccomp,
            })),
        }
    }
}

pub enum Config {
    Boot(Box<VmConfig>),
    Restore(Box<RestoreConfig>),
}

impl Config {
    /// Builds or restores the VM.
    pub fn build(self) -> Result<Vmm, BuildError> {
        match self {
            Config::Boot(c) => bulkhead_vmm::builder::build(*c),
            Config::Restore(c) => bulkhead_vmm::builder::restore(*c),
        }
    }
}
