//! Snapshot state of a virtio-net device, and its restore with a new TAP.
//!
//! A template snapshot serves any container, so the net device is a slot
//! like a disk: negotiated features and queues come from the snapshot,
//! the TAP and the MAC from the restore request. The TAP is host state
//! and never saved, nor is a frame waiting for rx buffers (a dropped
//! frame is something every network survives). The guest's eth0 keeps
//! the address it read at probe; config space reports the new one, with
//! the config generation bumped, for whoever sets eth0's address from it.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::device::{Net, NetError, FEATURES, QUEUE_SIZES};
use super::tap::Tap;
use crate::devices::virtio::attach::AttachError;
use crate::devices::virtio::device::DeviceCore;
use crate::devices::virtio::persist::{CoreModel, DeviceCoreState, RestoreError};

const DEVICE: &str = "virtio-net";

/// A net device as the guest last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    pub core: DeviceCoreState,
    /// The MAC config space showed.
    pub mac: [u8; 6],
    /// The TAP at save time, `None` for an empty slot. Informational: the
    /// restore request names the new one.
    pub tap: Option<String>,
}

impl Net {
    pub fn save(&self) -> NetState {
        NetState {
            core: self.core.save(),
            mac: self.mac(),
            tap: self.tap().map(|t| t.name().to_string()),
        }
    }

    /// Rebuilds the device from `state` on `tap` (or as an empty slot),
    /// showing `mac`. An active device is re-activated against `mem`, its
    /// new TAP first told the offloads the driver accepted.
    pub fn restore(
        state: &NetState,
        tap: Option<Tap>,
        mac: [u8; 6],
        mem: &GuestMemoryMmap,
    ) -> Result<Self, RestoreError> {
        let model = CoreModel {
            device: DEVICE,
            queue_sizes: &QUEUE_SIZES,
            supported_features: FEATURES,
        };
        let mut core = DeviceCore::restore(&state.core, model, mem)?;
        if mac != state.mac {
            core.config_generation = core.config_generation.wrapping_add(1);
        }
        let net = Net::with_parts(core, tap, mac).map_err(net_error)?;
        if state.core.activated {
            net.apply_offloads()
                .map_err(|e| net_error(NetError::Tap(e)))?;
        }
        Ok(net)
    }
}

fn net_error(e: NetError) -> RestoreError {
    RestoreError::Attach(AttachError::Net(e))
}
