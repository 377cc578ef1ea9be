//! virtio devices over the virtio-mmio transport.
//!
//! A device ([`block::Block`], [`vsock::Vsock`], [`fs::Fs`], [`net::Net`])
//! implements [`VirtioDevice`] for the transport side (features, queues,
//! config space, activation) and `event_manager::MutEventSubscriber` for the
//! work side: every queue and backend file descriptor is serviced on the VMM
//! event loop, never on a vCPU thread. [`attach::attach_mmio_device`] wires one device into a VM.
//!
//! Snapshots: [`persist`] holds the state every device shares (queues,
//! [`DeviceCore`], transport registers), each device a `persist.rs` with its
//! own, and [`attach::restore_devices`] puts a saved set back into a new VM.

pub mod attach;
pub mod block;
pub mod device;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queue;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;

pub use attach::{
    attach_devices, attach_mmio_device, restore_devices, AttachError, AttachedDevices,
    DeviceEventManager, DeviceState, MmioDeviceState, MmioSlot, MmioSlotState, RestoreBackings,
    VirtioDevices,
};
pub use device::{ActivateError, DeviceCore, VirtioDevice};
pub use interrupt::{IrqKind, IrqTrigger};
pub use mmio::MmioTransport;
pub use persist::{DeviceCoreState, MmioTransportState, RestoreError, VirtqueueState};

/// Feature bits shared by every device (virtio 1.x, section 6).
pub mod features {
    /// The device conforms to virtio 1.x; the modern mmio transport needs it.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    /// Descriptors may point at indirect descriptor tables.
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
}
