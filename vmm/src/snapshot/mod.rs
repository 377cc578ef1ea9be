//! Snapshots of a whole VM: what KVM holds (vCPUs, interrupt controllers,
//! PIT, clock), what the devices hold, and guest memory.
//!
//! A snapshot is a directory with two files: `state` ([`format`]: header,
//! JSON, checksum) and `memory` ([`memory`]: the raw guest RAM, sparse).
//! [`SnapshotState::check_compatible`] refuses a snapshot made by another
//! VMM version or on a host with another CPU feature set, whose state KVM
//! would accept but the guest would not survive.

pub mod format;
pub mod memory;

use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

use crate::devices::legacy::persist::SerialDeviceState;
use crate::devices::virtio::MmioDeviceState;
use crate::vstate::persist::{VcpuState, VmState};

pub use format::FormatError;
pub use memory::MemoryFileError;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// The version that must match for a snapshot to be restored.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("snapshot {} was made by bulkhead VMM {found}, this is {VMM_VERSION}", .path.display())]
    VmmVersion { path: PathBuf, found: String },
    #[error("snapshot {} was made on a host with another CPU ({found}; this host: {here})", .path.display())]
    HostCpu {
        path: PathBuf,
        found: String,
        here: String,
    },
    #[error("snapshot {} is inconsistent: {what}", .path.display())]
    Inconsistent { path: PathBuf, what: String },
    #[error("cannot snapshot a VM whose virtio-fs share {0:?} is connected: its FUSE session lives in the backend")]
    ConnectedShare(String),
    #[error("cannot read this host's CPU features from KVM: {0}")]
    HostCpuid(kvm_ioctls::Error),
    #[error("cannot create snapshot directory {}: {source}", .path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What makes guest state portable between hosts: KVM exposes exactly
/// these CPU features, so a guest that probed them at boot finds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// CPUID leaf 0 vendor string.
    pub vendor: String,
    /// CPUID leaf 1 EAX: family, model, stepping.
    pub signature: u32,
    /// CRC-32 of the feature words of KVM_GET_SUPPORTED_CPUID.
    pub features: u32,
}

/// The CPUID words that list features: (leaf, sub-leaf, EAX EBX ECX EDX
/// mask). Other words carry per-CPU facts (APIC IDs of whichever host CPU
/// ran the ioctl, cache topology) that differ from one call to the next.
const FEATURE_WORDS: &[(u32, u32, [bool; 4])] = &[
    (0x1, 0, [false, false, true, true]),
    (0x7, 0, [false, true, true, true]),
    (0x7, 1, [true, false, false, false]),
    (0xd, 1, [true, false, false, false]),
    (0x8000_0001, 0, [false, false, true, true]),
    (0x8000_0007, 0, [false, false, false, true]),
    (0x8000_0008, 0, [false, true, false, false]),
];

impl HostCpu {
    pub fn of(kvm: &Kvm) -> Result<HostCpu, SnapshotError> {
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(SnapshotError::HostCpuid)?;
        let entries = cpuid.as_slice();
        let leaf = |f: u32| entries.iter().find(|e| e.function == f && e.index == 0);
        let vendor = leaf(0)
            .map(|e| {
                [e.ebx, e.edx, e.ecx]
                    .iter()
                    .flat_map(|r| r.to_le_bytes())
                    .map(char::from)
                    .collect()
            })
            .unwrap_or_default();
        let signature = leaf(1).map_or(0, |e| e.eax);
        let mut hasher = crc32fast::Hasher::new();
        for &(function, index, mask) in FEATURE_WORDS {
            let words = entries
                .iter()
                .find(|e| e.function == function && e.index == index)
                .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
            hasher.update(&function.to_le_bytes());
            for (w, keep) in words.iter().zip(mask) {
                hasher.update(&if keep { *w } else { 0 }.to_le_bytes());
            }
        }
        Ok(HostCpu {
            vendor,
            signature,
            features: hasher.finalize(),
        })
    }
}

impl std::fmt::Display for HostCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} signature {:#x}, features {:08x}",
            self.vendor, self.signature, self.features
        )
    }
}

/// Everything in a snapshot but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub vmm_version: String,
    pub host_cpu: HostCpu,
    /// Guest RAM in bytes; the memory file has exactly this size.
    pub mem_size: u64,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialDeviceState,
    /// The virtio-mmio devices in slot order.
    pub devices: Vec<MmioDeviceState>,
}

impl SnapshotState {
    /// Refuses state this VMM on this host must not restore.
    pub fn check_compatible(&self, path: &Path, host: &HostCpu) -> Result<(), SnapshotError> {
        if self.vmm_version != VMM_VERSION {
            return Err(SnapshotError::VmmVersion {
                path: path.to_path_buf(),
                found: self.vmm_version.clone(),
            });
        }
        if &self.host_cpu != host {
            return Err(SnapshotError::HostCpu {
                path: path.to_path_buf(),
                found: self.host_cpu.to_string(),
                here: host.to_string(),
            });
        }
        let inconsistent = |what: String| SnapshotError::Inconsistent {
            path: path.to_path_buf(),
            what,
        };
        if self.vcpus.is_empty() || self.vcpus.len() > usize::from(crate::config::MAX_VCPUS) {
            return Err(inconsistent(format!("{} vCPUs", self.vcpus.len())));
        }
        for (i, v) in self.vcpus.iter().enumerate() {
            if usize::from(v.id) != i {
                return Err(inconsistent(format!("vCPU {i} has id {}", v.id)));
            }
        }
        if self.mem_size < crate::config::MIN_MEM_MIB << 20 || !self.mem_size.is_multiple_of(4096) {
            return Err(inconsistent(format!(
                "guest memory of {} bytes",
                self.mem_size
            )));
        }
        Ok(())
    }
}

/// Where a snapshot's two files live.
#[derive(Debug, Clone)]
pub struct SnapshotPaths {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl SnapshotPaths {
    pub fn in_dir(dir: &Path) -> SnapshotPaths {
        SnapshotPaths {
            state: dir.join(STATE_FILE),
            memory: dir.join(MEMORY_FILE),
        }
    }
}

/// Writes `state` and `mem` into `dir` (which must not hold a snapshot
/// yet; callers make it in a temporary place and rename it into use).
pub fn write_snapshot(
    dir: &Path,
    state: &SnapshotState,
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let paths = SnapshotPaths::in_dir(dir);
    memory::save_memory(mem, &paths.memory)?;
    format::write_file(&paths.state, state)?;
    Ok(())
}

/// Reads and checks the state of the snapshot in `dir`.
pub fn read_state(dir: &Path, host: &HostCpu) -> Result<SnapshotState, SnapshotError> {
    let paths = SnapshotPaths::in_dir(dir);
    let state: SnapshotState = format::read_file(&paths.state)?;
    state.check_compatible(&paths.state, host)?;
    Ok(state)
}
