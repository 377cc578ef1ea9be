//! Snapshot state shared by every virtio device: its queues, the
//! [`DeviceCore`] bookkeeping and the virtio-mmio transport registers.
//!
//! Restore never replays the driver's register writes through the status
//! state machine: the guest already negotiated, so the saved values are
//! validated directly (virtio-queue's `Queue::try_from`, ring addresses
//! against the new guest memory) and an active device is re-activated as is.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::device::{DeviceCore, VirtioDevice};
use super::mmio::{status, MmioTransport};
use crate::devices::bus::lock;
pub use crate::devices::persist::RestoreError;

/// A serde mirror of `virtio_queue::QueueState`, which has no serde support.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtqueueState {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<&Queue> for VirtqueueState {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<&VirtqueueState> for virtio_queue::QueueState {
    fn from(s: &VirtqueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// What [`DeviceCore`] needs to continue where the driver left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCoreState {
    /// What the device offered at boot; the guest may read it again after a
    /// reset, so the restored device must offer the same.
    pub avail_features: u64,
    pub acked_features: u64,
    pub queues: Vec<VirtqueueState>,
    /// The driver set DRIVER_OK and activation succeeded.
    pub activated: bool,
    pub config_generation: u32,
}

/// The device model a [`DeviceCore`] is restored into: what it is called in
/// errors, its queues' maximum sizes, and every feature it implements.
#[derive(Clone, Copy, Debug)]
pub struct CoreModel<'a> {
    pub device: &'static str,
    pub queue_sizes: &'a [u16],
    pub supported_features: u64,
}

impl DeviceCore {
    pub fn save(&self) -> DeviceCoreState {
        DeviceCoreState {
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            queues: self.queues.iter().map(VirtqueueState::from).collect(),
            activated: self.is_activated(),
            config_generation: self.config_generation,
        }
    }

    /// Rebuilds the core of a `model` device from `state`, with fresh
    /// eventfds. An active device is re-activated against `mem`, which
    /// signals `activate_evt` so the event loop watches its queues again.
    pub fn restore(
        state: &DeviceCoreState,
        model: CoreModel<'_>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, RestoreError> {
        let device = model.device;
        check_subset(device, state.avail_features, model.supported_features)?;
        check_subset(device, state.acked_features, state.avail_features)?;
        if state.queues.len() != model.queue_sizes.len() {
            return Err(RestoreError::QueueCount {
                device,
                saved: state.queues.len(),
                expected: model.queue_sizes.len(),
            });
        }
        let mut core = DeviceCore::new(state.avail_features, model.queue_sizes)
            .map_err(|source| RestoreError::Setup { device, source })?;
        for (index, (saved, &expected)) in state.queues.iter().zip(model.queue_sizes).enumerate() {
            core.queues[index] = restore_queue(device, index, saved, expected)?;
        }
        core.acked_features = state.acked_features;
        core.config_generation = state.config_generation;
        if state.activated {
            if let Some(index) = core.queues.iter().position(|q| !q.is_valid(mem)) {
                return Err(RestoreError::QueueOutsideMemory { device, index });
            }
            core.activate(mem.clone())
                .map_err(|source| RestoreError::Activate { device, source })?;
        }
        Ok(core)
    }
}

fn check_subset(device: &'static str, features: u64, allowed: u64) -> Result<(), RestoreError> {
    if features & !allowed != 0 {
        return Err(RestoreError::Features {
            device,
            features,
            allowed,
        });
    }
    Ok(())
}

fn restore_queue(
    device: &'static str,
    index: usize,
    saved: &VirtqueueState,
    expected: u16,
) -> Result<Queue, RestoreError> {
    if saved.max_size != expected {
        return Err(RestoreError::QueueMaxSize {
            device,
            index,
            saved: saved.max_size,
            expected,
        });
    }
    Queue::try_from(virtio_queue::QueueState::from(saved)).map_err(|source| RestoreError::Queue {
        device,
        index,
        source,
    })
}

/// The virtio-mmio registers the driver wrote, plus pending interrupt causes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub device_status: u32,
    pub interrupt_status: u32,
}

impl MmioTransport {
    pub fn save(&self) -> MmioTransportState {
        MmioTransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            device_status: self.device_status,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
        }
    }

    /// Puts a restored `device` back behind registers holding `state`.
    pub fn restore(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        state: &MmioTransportState,
    ) -> Result<Self, RestoreError> {
        {
            let dev = lock(&device);
            if dev.is_activated() && state.device_status & status::DRIVER_OK == 0 {
                return Err(RestoreError::TransportStatus {
                    device_type: dev.device_type(),
                    status: state.device_status,
                });
            }
        }
        let mut transport = MmioTransport::new(mem, device);
        transport.device_features_sel = state.device_features_sel;
        transport.driver_features_sel = state.driver_features_sel;
        transport.queue_sel = state.queue_sel;
        transport.device_status = state.device_status;
        transport
            .interrupt_status
            .store(state.interrupt_status, Ordering::SeqCst);
        Ok(transport)
    }
}
