//! Snapshot state of the vsock device.
//!
//! Host connections are Unix streams owned by this process: none survive a
//! snapshot. A restored device gets a fresh muxer and, once active again,
//! sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, so the guest
//! resets its connected sockets (listening ones survive) and re-reads its CID
//! from config space, which lets a restore choose a different CID.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::device::{check_cid, Vsock, FEATURES, VSOCK_QUEUE_SIZE};
use crate::devices::virtio::device::DeviceCore;
use crate::devices::virtio::persist::{CoreModel, DeviceCoreState, RestoreError};

const DEVICE: &str = "virtio-vsock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VsockState {
    /// The guest CID; a restore may replace it before calling [`Vsock::restore`].
    pub cid: u32,
    pub core: DeviceCoreState,
}

impl Vsock {
    pub fn save(&self) -> VsockState {
        VsockState {
            cid: self.cid(),
            core: self.core.save(),
        }
    }

    /// Rebuilds the device from `state`, listening for host connections on
    /// `uds_path`. An active device is re-activated against `mem` and owes
    /// the guest a transport reset.
    pub fn restore(
        state: &VsockState,
        uds_path: impl AsRef<Path>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, RestoreError> {
        check_cid(state.cid)?;
        let model = CoreModel {
            device: DEVICE,
            queue_sizes: &[VSOCK_QUEUE_SIZE; 3],
            supported_features: FEATURES,
        };
        let core = DeviceCore::restore(&state.core, model, mem)?;
        let mut vsock = Vsock::with_core(core, state.cid, uds_path.as_ref())?;
        vsock.reset_pending = state.core.activated;
        Ok(vsock)
    }
}
