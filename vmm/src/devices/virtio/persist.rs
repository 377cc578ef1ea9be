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

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, round_trip};

    const MODEL: CoreModel<'static> = CoreModel {
        device: "test-device",
        queue_sizes: &[16, 8],
        supported_features: 0xff,
    };

    fn configured_core() -> DeviceCore {
        let mut core = DeviceCore::new(0x0f, &[16, 8]).unwrap();
        core.acked_features = 0x05;
        core.config_generation = 7;
        for (i, q) in core.queues.iter_mut().enumerate() {
            let base = 0x1_0000 * (i as u64 + 1);
            q.set_size(8);
            q.set_desc_table_address(Some(base as u32), None);
            q.set_avail_ring_address(Some(base as u32 + 0x1000), None);
            q.set_used_ring_address(Some(base as u32 + 0x2000), None);
            q.set_next_avail(3);
            q.set_next_used(2);
            q.set_event_idx(true);
            q.set_ready(true);
        }
        core
    }

    #[test]
    fn queue_mirror_matches_virtio_queue() {
        let core = configured_core();
        let q = &core.queues[1];
        let mirror = round_trip(&VirtqueueState::from(q));
        assert_eq!(virtio_queue::QueueState::from(&mirror), q.state());
    }

    #[test]
    fn inactive_core_round_trip() {
        let core = configured_core();
        let state = round_trip(&core.save());
        assert!(!state.activated);
        let restored = DeviceCore::restore(&state, MODEL, &guest_memory()).unwrap();
        assert_eq!(restored.save(), state);
        assert!(!restored.is_activated());
        // Nothing for the event loop to do.
        assert!(restored.activate_evt.read().is_err());
    }

    #[test]
    fn active_core_is_reactivated_against_new_memory() {
        let mut core = configured_core();
        core.activate(guest_memory()).unwrap();
        let state = round_trip(&core.save());
        assert!(state.activated);
        let mem = guest_memory();
        let restored = DeviceCore::restore(&state, MODEL, &mem).unwrap();
        assert!(restored.is_activated());
        assert_eq!(restored.activate_evt.read().unwrap(), 1);
        assert_eq!(restored.queues[0].next_avail(), 3);
        assert!(restored.queues[0].event_idx_enabled());
        assert_eq!(restored.acked_features, 0x05);
        assert_eq!(restored.config_generation, 7);
        let mut small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_8000)]).unwrap();
        let err = DeviceCore::restore(&state, MODEL, &small).unwrap_err();
        assert!(
            matches!(err, RestoreError::QueueOutsideMemory { index: 1, .. }),
            "{err}"
        );
        small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        let err = DeviceCore::restore(&state, MODEL, &small).unwrap_err();
        assert!(
            matches!(err, RestoreError::QueueOutsideMemory { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn untrusted_core_state_is_rejected() {
        let good = configured_core().save();
        let mem = guest_memory();
        let check = |state: &DeviceCoreState| {
            let err = DeviceCore::restore(state, MODEL, &mem).unwrap_err();
            assert!(err.to_string().starts_with("test-device:"), "{err}");
            err
        };
        let mut bad = good.clone();
        bad.queues[1].size = 6;
        assert!(matches!(check(&bad), RestoreError::Queue { index: 1, .. }));
        let mut bad = good.clone();
        bad.queues[0].max_size = 0;
        assert!(matches!(check(&bad), RestoreError::QueueMaxSize { .. }));
        let mut bad = good.clone();
        bad.queues[0].desc_table = 0x1_0001;
        assert!(matches!(check(&bad), RestoreError::Queue { index: 0, .. }));
        let mut bad = good.clone();
        bad.avail_features = 0x100;
        assert!(matches!(check(&bad), RestoreError::Features { .. }));
        let mut bad = good.clone();
        bad.acked_features = 0x30;
        assert!(matches!(check(&bad), RestoreError::Features { .. }));
        let mut bad = good;
        bad.queues.clear();
        assert!(matches!(
            check(&bad),
            RestoreError::QueueCount { saved: 0, .. }
        ));
    }
}
