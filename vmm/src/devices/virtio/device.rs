//! What a virtio device shows its transport, and the state every device shares.

use std::io;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::IrqTrigger;

/// Why a device could not start after the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not make every queue ready with rings inside guest memory.
    #[error("virtio queue {0} is not ready or its rings are outside guest memory")]
    InvalidQueue(usize),
    /// The event loop could not be told to start servicing the device.
    #[error("cannot signal the device activation event: {0}")]
    Signal(#[source] io::Error),
}

/// The device half of a virtio device, driven by its transport.
///
/// The transport calls these on a vCPU thread while holding the device lock;
/// the same device also implements `event_manager::MutEventSubscriber` and does
/// its queue work on the event loop.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// The state every device shares; the methods below default to it.
    fn core(&self) -> &DeviceCore;
    fn core_mut(&mut self) -> &mut DeviceCore;
    /// Reads device configuration space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Every feature bit the device offers.
    fn avail_features(&self) -> u64 {
        self.core().avail_features
    }
    /// The feature bits the driver accepted.
    fn acked_features(&self) -> u64 {
        self.core().acked_features
    }
    /// Stores the driver's accepted features; the transport has already masked
    /// them with [`VirtioDevice::avail_features`].
    fn set_acked_features(&mut self, features: u64) {
        self.core_mut().acked_features = features;
    }
    /// The device's queues; their count and max sizes are fixed at creation.
    fn queues(&self) -> &[Queue] {
        &self.core().queues
    }
    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.core_mut().queues
    }
    /// One eventfd per queue, signalled when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd] {
        &self.core().queue_events
    }
    /// The device's interrupt line.
    fn interrupt(&self) -> &IrqTrigger {
        &self.core().irq
    }
    /// Starts the device: the queues are configured and valid in `mem`.
    fn activate(&mut self, mem: GuestMemoryMmap) -> Result<(), ActivateError> {
        self.core_mut().activate(mem)
    }
    fn is_activated(&self) -> bool {
        self.core().is_activated()
    }
    /// The virtio-mmio ConfigGeneration register: changes whenever the device
    /// changes its configuration space behind the driver's back.
    fn config_generation(&self) -> u32 {
        self.core().config_generation
    }
    /// Returns the device to its pre-negotiation state (driver wrote status 0).
    fn reset(&mut self) {
        self.core_mut().reset();
    }
}

/// State every device carries: features, queues, their eventfds, the
/// interrupt, and guest memory once active.
///
/// `activate_evt` is how the vCPU thread tells the event loop that the device
/// changed state (activated or reset): the loop then registers the queue
/// eventfds or drops per-activation state.
#[derive(Debug)]
pub struct DeviceCore {
    pub avail_features: u64,
    pub acked_features: u64,
    pub queues: Vec<Queue>,
    pub queue_events: Vec<EventFd>,
    pub irq: IrqTrigger,
    pub activate_evt: EventFd,
    /// Guest memory, present exactly while the device is active.
    pub mem: Option<GuestMemoryMmap>,
    /// See [`VirtioDevice::config_generation`]; survives resets, because the
    /// driver only compares successive values.
    pub config_generation: u32,
}

impl DeviceCore {
    /// `queue_sizes` are the maximum sizes, each a power of two.
    pub fn new(avail_features: u64, queue_sizes: &[u16]) -> io::Result<Self> {
        let queues = queue_sizes
            .iter()
            .map(|&size| {
                Queue::new(size).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("bad virtio queue size {size}: {e}"),
                    )
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let queue_events = queue_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            avail_features,
            acked_features: 0,
            queues,
            queue_events,
            irq: IrqTrigger::new()?,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            mem: None,
            config_generation: 0,
        })
    }

    pub fn activate(&mut self, mem: GuestMemoryMmap) -> Result<(), ActivateError> {
        self.mem = Some(mem);
        self.activate_evt.write(1).map_err(|e| {
            self.mem = None;
            ActivateError::Signal(e)
        })
    }

    pub fn is_activated(&self) -> bool {
        self.mem.is_some()
    }

    pub fn reset(&mut self) {
        self.mem = None;
        self.acked_features = 0;
        self.queues.iter_mut().for_each(QueueT::reset);
        // Wake the event loop so it drops state tied to the old activation.
        if let Err(e) = self.activate_evt.write(1) {
            log::error!("virtio: cannot signal device reset: {e}");
        }
    }

    pub fn has_feature(&self, feature: u64) -> bool {
        self.acked_features & feature != 0
    }
}

/// Copies the part of `config` at `offset` into `data`, zero-filling whatever
/// lies past the end, so a guest reading out of range never faults the VMM.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut b = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut b);
        assert_eq!(b, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut b);
        assert_eq!(b, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn core_rejects_bad_queue_size() {
        assert!(DeviceCore::new(0, &[3]).is_err());
        let core = DeviceCore::new(0, &[256, 64]).unwrap();
        assert_eq!(core.queues[1].max_size(), 64);
        assert_eq!(core.queue_events.len(), 2);
    }
}
