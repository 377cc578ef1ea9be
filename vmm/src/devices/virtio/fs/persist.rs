//! Snapshot state of a virtio-fs device, and its restore with a new backend.
//!
//! Only slots without a backend are saved (the VMM refuses to snapshot a
//! connected share: its FUSE session lives in virtiofsd), so the queues
//! hold no request in flight; a restore hands the saved rings to a fresh
//! backend, which continues at the saved ring indices.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::backend::Backend;
use super::device::{Fs, FEATURES, QUEUE_SIZES};
use crate::devices::virtio::device::DeviceCore;
use crate::devices::virtio::persist::{CoreModel, DeviceCoreState, RestoreError};

const DEVICE: &str = "virtio-fs";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsState {
    pub core: DeviceCoreState,
    pub tag: String,
}

impl Fs {
    pub fn save(&self) -> FsState {
        FsState {
            core: self.core.save(),
            tag: self.tag.clone(),
        }
    }

    /// Rebuilds the device from `state`, connected to the backend at
    /// `socket` if given. When the driver had started the device, the
    /// backend is started now, before any vCPU runs, so a failing backend
    /// fails the restore rather than the guest's first request.
    pub fn restore(
        state: &FsState,
        socket: Option<&Path>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, RestoreError> {
        let model = CoreModel {
            device: DEVICE,
            queue_sizes: &QUEUE_SIZES,
            supported_features: FEATURES,
        };
        let core = DeviceCore::restore(&state.core, model, mem)?;
        let backend = socket
            .map(|s| Backend::connect(s, state.core.avail_features))
            .transpose()?;
        let mut fs = Fs::with_parts(core, &state.tag, backend)?;
        fs.start_backend()?;
        Ok(fs)
    }
}
