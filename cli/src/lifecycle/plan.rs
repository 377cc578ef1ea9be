//! What one container's microVM is made of, whoever asked for it (an
//! image for `bulkhead run`, an OCI bundle for `create`): written to the
//! state directory by the command that creates the container and read by
//! the monitor that builds it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_protocol::ContainerSpec;
use serde::{Deserialize, Serialize};

use super::network::NetworkPlan;
use crate::share::HostDir;
use crate::template::{MAX_WARM_SHARES, MAX_WARM_VOLUMES};

/// Guest RAM beyond the container's memory limit: kernel, agent, page cache.
pub const VM_OVERHEAD_MIB: u64 = 64;
pub const DEFAULT_VM_MIB: u64 = 128;

/// A virtio-blk disk: vda, vdb, ... in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything needed to build the container's VM and the container in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The container, with its storage naming the disks and share tags.
    pub spec: ContainerSpec,
    pub disks: Vec<Disk>,
    /// Served by one virtiofsd each, as `share0`, `share1`, ...
    pub host_dirs: Vec<HostDir>,
    pub mem_mib: u64,
    /// Boot the guest kernel instead of restoring a template.
    pub cold: bool,
    #[serde(default)]
    pub network: NetworkPlan,
    /// Give the VM's process a host cgroup of its own. Not under an
    /// engine: the engine made the container's cgroup and owns it.
    #[serde(default)]
    pub host_cgroup: bool,
}

impl Plan {
    /// The VM size for a container memory limit of `memory` bytes.
    pub fn mem_mib_for(memory: Option<i64>) -> u64 {
        memory
            .filter(|m| *m > 0)
            .map_or(DEFAULT_VM_MIB, |m| ((m as u64) >> 20) + VM_OVERHEAD_MIB)
            .max(DEFAULT_VM_MIB)
    }

    /// Whether a template has slots for this plan's disks and shares;
    /// says why not when it has not.
    pub fn fits_a_template(&self) -> bool {
        let named_volumes = self.disks.len().saturating_sub(2);
        if named_volumes > MAX_WARM_VOLUMES {
            eprintln!(
                "bulkhead: more than {MAX_WARM_VOLUMES} volumes: booting instead of restoring"
            );
            return false;
        }
        if self.host_dirs.len() > MAX_WARM_SHARES {
            eprintln!(
                "bulkhead: more than {MAX_WARM_SHARES} host directories: booting instead of restoring"
            );
            return false;
        }
        true
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec(self)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Plan> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("corrupt {}", path.display()))
    }
}

/// /dev/vda, /dev/vdb, ... for the n-th disk.
pub fn guest_disk(n: usize) -> anyhow::Result<String> {
    if n >= 26 {
        anyhow::bail!("too many volumes (at most 24)");
    }
    Ok(format!("/dev/vd{}", (b'a' + n as u8) as char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_size_follows_the_memory_limit() {
        assert_eq!(Plan::mem_mib_for(None), DEFAULT_VM_MIB);
        assert_eq!(Plan::mem_mib_for(Some(-1)), DEFAULT_VM_MIB);
        assert_eq!(Plan::mem_mib_for(Some(16 << 20)), DEFAULT_VM_MIB);
        assert_eq!(Plan::mem_mib_for(Some(512 << 20)), 512 + VM_OVERHEAD_MIB);
    }

    #[test]
    fn disks_are_named_in_order() {
        assert_eq!(guest_disk(0).unwrap(), "/dev/vda");
        assert_eq!(guest_disk(2).unwrap(), "/dev/vdc");
        assert!(guest_disk(26).is_err());
    }
}
