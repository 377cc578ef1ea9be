//! Snapshot state of a block device, and its rebuild with a new backing.
//!
//! A template snapshot serves any image, so a block device is a slot: its
//! negotiated features and queues come from the snapshot, its backing file
//! from the restore request. When the backing's capacity differs from what
//! the guest last saw, the device bumps the config generation and, once
//! active again, raises a config interrupt; Linux's virtio_blk then re-reads
//! the capacity (`set_capacity_and_notify`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::device::{Block, BASE_FEATURES, BLOCK_QUEUE_SIZE, VIRTIO_BLK_F_RO};
use super::disk::DiskImage;
use crate::devices::virtio::device::DeviceCore;
use crate::devices::virtio::persist::{CoreModel, DeviceCoreState, RestoreError};

const DEVICE: &str = "virtio-blk";

/// A block device as the guest last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockState {
    pub core: DeviceCoreState,
    /// Capacity in sectors shown in config space.
    pub capacity: u64,
    /// The backing at save time, `None` for an empty slot. Informational: the
    /// restore request names the new backing.
    pub backing: Option<BackingState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackingState {
    pub path: PathBuf,
    pub read_only: bool,
}

impl Block {
    pub fn save(&self) -> BlockState {
        BlockState {
            core: self.core.save(),
            capacity: self.capacity(),
            backing: self.disk.as_ref().map(|d| BackingState {
                path: d.path().to_path_buf(),
                read_only: d.read_only(),
            }),
        }
    }

    /// Rebuilds the device from `state` with `backing` (path, read_only) as
    /// its new image, or as an empty slot. An active device is re-activated
    /// against `mem`. A read-only backing answers writes with IOERR; RO is
    /// only advertised if the snapshot's device already offered it.
    pub fn restore(
        state: &BlockState,
        backing: Option<(&Path, bool)>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, RestoreError> {
        let disk = backing
            .map(|(path, read_only)| DiskImage::open(path, read_only))
            .transpose()?;
        let model = CoreModel {
            device: DEVICE,
            queue_sizes: &[BLOCK_QUEUE_SIZE],
            supported_features: BASE_FEATURES | VIRTIO_BLK_F_RO,
        };
        let mut core = DeviceCore::restore(&state.core, model, mem)?;
        let sectors = disk.as_ref().map_or(0, DiskImage::sectors);
        let new_backing = disk.as_ref().map(|d| d.path());
        let old_backing = state.backing.as_ref().map(|b| b.path.as_path());
        let changed = sectors != state.capacity || new_backing != old_backing;
        if changed {
            core.config_generation = core.config_generation.wrapping_add(1);
        }
        let mut block = Block::with_parts(core, disk);
        // A driver that is not running reads config space when it probes.
        block.config_change_pending = changed && state.core.activated;
        Ok(block)
    }
}
