//! The virtio-mmio transport, version 2 ("modern", virtio 1.x section 4.2.2).
//!
//! Sits on the MMIO bus and turns the driver's register accesses into feature
//! negotiation, queue setup and the device status state machine. Only register
//! bookkeeping runs here, on the vCPU thread; queue work happens on the event
//! loop once [`VirtioDevice::activate`] has signalled it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::device::VirtioDevice;
use super::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use super::interrupt::IrqKind;
use crate::devices::bus::{lock, BusDevice};

const MMIO_MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
/// No PCI vendor stands behind these devices.
const VENDOR_ID: u32 = 0;

mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Offset of QueueNotify, where the builder places the per-queue ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// Device status bits (virtio 1.x section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// One virtio device behind virtio-mmio registers.
///
/// The register fields are visible to `persist`, which saves and restores them.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    pub(super) interrupt_status: Arc<AtomicU32>,
    pub(super) device_features_sel: u32,
    pub(super) driver_features_sel: u32,
    pub(super) queue_sel: u32,
    pub(super) device_status: u32,
}

impl MmioTransport {
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let interrupt_status = lock(&device).interrupt().status();
        Self {
            device,
            mem,
            interrupt_status,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            device_status: 0,
        }
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    fn status_is(&self, set: u32, clear: u32) -> bool {
        self.device_status & (set | clear) == set
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let dev = lock(&self.device);
        let queue = dev.queues().get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => dev.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => dev.avail_features() as u32,
                1 => (dev.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.device_status,
            // No shared memory regions: a length of all ones says "absent".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            // Bumped when the host changes config space (a restored block
            // slot with a new backing), so the driver re-reads it consistently.
            reg::CONFIG_GENERATION => dev.config_generation(),
            _ => {
                log::warn!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.ack_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            reg::STATUS => self.set_status(value),
            _ => log::warn!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn ack_features(&mut self, value: u32) {
        if !self.status_is(status::DRIVER, status::FEATURES_OK | status::FAILED) {
            log::warn!("virtio-mmio: driver features written outside negotiation");
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => {
                log::warn!("virtio-mmio: driver features page {sel} does not exist");
                return;
            }
        };
        let mut dev = lock(&self.device);
        let page_mask = u64::from(u32::MAX) << shift;
        let offered = u64::from(value) << shift;
        let unknown = offered & !dev.avail_features();
        if unknown != 0 {
            log::warn!("virtio-mmio: driver acked features it was not offered: {unknown:#x}");
        }
        let acked = (dev.acked_features() & !page_mask) | (offered & dev.avail_features());
        dev.set_acked_features(acked);
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        // Queue layout may only change between FEATURES_OK and DRIVER_OK.
        if !self.status_is(
            status::FEATURES_OK,
            status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET,
        ) {
            log::warn!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}",
                self.device_status
            );
            return;
        }
        let mut dev = lock(&self.device);
        let Some(q) = dev.queues_mut().get_mut(self.queue_sel as usize) else {
            log::warn!("virtio-mmio: queue {} does not exist", self.queue_sel);
            return;
        };
        match offset {
            reg::QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => q.set_size(size),
                Err(_) => log::warn!("virtio-mmio: queue size {value} too large"),
            },
            reg::QUEUE_READY => q.set_ready(value == 1),
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
            reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
            reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    /// A QueueNotify write that reached us because no ioeventfd caught it.
    fn notify_queue(&self, index: u32) {
        let dev = lock(&self.device);
        match dev.queue_events().get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::error!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => log::warn!("virtio-mmio: notify for missing queue {index}"),
        }
    }

    fn set_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.device_status;
        if value & current != current {
            log::warn!("virtio-mmio: driver tried to clear status bits {current:#x} -> {value:#x}");
            return;
        }
        let added = value & !current;
        if added & FAILED != 0 {
            self.device_status |= FAILED;
            return;
        }
        match added {
            0 => {}
            ACKNOWLEDGE if current == 0 => self.device_status = value,
            DRIVER if current == ACKNOWLEDGE => self.device_status = value,
            FEATURES_OK if current == ACKNOWLEDGE | DRIVER => {
                // A modern transport cannot drive a legacy-only driver; leaving
                // FEATURES_OK clear tells it the negotiation failed.
                if lock(&self.device).acked_features() & VIRTIO_F_VERSION_1 != 0 {
                    self.device_status = value;
                } else {
                    log::warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1");
                }
            }
            DRIVER_OK if current == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                self.device_status = value;
                self.activate();
            }
            _ => log::warn!("virtio-mmio: invalid status transition {current:#x} -> {value:#x}"),
        }
    }

    fn activate(&mut self) {
        let mut dev = lock(&self.device);
        let event_idx = dev.acked_features() & VIRTIO_RING_F_EVENT_IDX != 0;
        let invalid = dev.queues().iter().position(|q| !q.is_valid(&self.mem));
        let result = match invalid {
            Some(index) => Err(super::device::ActivateError::InvalidQueue(index)),
            None => {
                dev.queues_mut()
                    .iter_mut()
                    .for_each(|q| q.set_event_idx(event_idx));
                dev.activate(self.mem.clone())
            }
        };
        if let Err(e) = result {
            log::error!(
                "virtio-mmio: cannot activate device type {}: {e}",
                dev.device_type()
            );
            self.device_status |= status::DEVICE_NEEDS_RESET;
            if let Err(e) = dev.interrupt().trigger(IrqKind::Config) {
                log::error!("virtio-mmio: cannot raise config interrupt: {e}");
            }
        }
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.device_status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "virtio-mmio: {}-byte read at {offset:#x} is not a register access",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!(
                "virtio-mmio: {}-byte write at {offset:#x} is not a register access",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            log::warn!("virtio-mmio: unaligned write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::device::{ActivateError, DeviceCore};

    use crate::devices::virtio::test_utils::{guest_memory, mmio_read, mmio_write, GuestQueue};

    use vm_memory::GuestAddress;

    const DUMMY_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 0x5;

    struct Dummy {
        core: DeviceCore,
        config: [u8; 8],
        activations: u32,
        resets: u32,
    }

    impl Dummy {
        fn new() -> Self {
            Self {
                core: DeviceCore::new(DUMMY_FEATURES, &[16, 8]).unwrap(),
                config: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
                activations: 0,
                resets: 0,
            }
        }
    }

    impl VirtioDevice for Dummy {
        fn core(&self) -> &DeviceCore {
            &self.core
        }
        fn core_mut(&mut self) -> &mut DeviceCore {
            &mut self.core
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::device::read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let start = offset as usize;
            if let Some(dst) = self.config.get_mut(start..start + data.len()) {
                dst.copy_from_slice(data);
            }
        }
        fn activate(&mut self, mem: GuestMemoryMmap) -> Result<(), ActivateError> {
            self.activations += 1;
            self.core.activate(mem)
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.core.reset();
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>, GuestMemoryMmap) {
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(Dummy::new()));
        let t = MmioTransport::new(mem.clone(), dev.clone());
        (t, dev, mem)
    }

    fn negotiate(t: &mut MmioTransport) {
        use status::*;
        mmio_write(t, reg::STATUS, ACKNOWLEDGE);
        mmio_write(t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        mmio_write(t, reg::DRIVER_FEATURES_SEL, 0);
        mmio_write(t, reg::DRIVER_FEATURES, DUMMY_FEATURES as u32);
        mmio_write(t, reg::DRIVER_FEATURES_SEL, 1);
        mmio_write(t, reg::DRIVER_FEATURES, (DUMMY_FEATURES >> 32) as u32);
        mmio_write(t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = setup();
        assert_eq!(mmio_read(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(mmio_read(&mut t, reg::VERSION), 2);
        assert_eq!(mmio_read(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(mmio_read(&mut t, reg::VENDOR_ID), 0);
        assert_eq!(mmio_read(&mut t, 0x0f0), 0);

        // Sub-word register reads are not register accesses.
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn feature_pages() {
        let (mut t, dev, _) = setup();
        mmio_write(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(
            mmio_read(&mut t, reg::DEVICE_FEATURES),
            DUMMY_FEATURES as u32
        );
        mmio_write(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(mmio_read(&mut t, reg::DEVICE_FEATURES), 1);
        mmio_write(&mut t, reg::DEVICE_FEATURES_SEL, 7);
        assert_eq!(mmio_read(&mut t, reg::DEVICE_FEATURES), 0);

        // Acking before DRIVER is ignored.
        mmio_write(&mut t, reg::DRIVER_FEATURES, 0x1);
        assert_eq!(dev.lock().unwrap().core.acked_features, 0);

        mmio_write(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        mmio_write(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        // Bits the device did not offer are dropped.
        mmio_write(&mut t, reg::DRIVER_FEATURES, 0xffff_ffff);
        assert_eq!(
            dev.lock().unwrap().core.acked_features,
            DUMMY_FEATURES & 0xffff_ffff
        );
    }

    #[test]
    fn features_ok_requires_version_1() {
        use status::*;
        let (mut t, _, _) = setup();
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE);
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        mmio_write(&mut t, reg::DRIVER_FEATURES, 0x5);
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(mmio_read(&mut t, reg::STATUS), ACKNOWLEDGE | DRIVER);

        mmio_write(&mut t, reg::DRIVER_FEATURES_SEL, 1);
        mmio_write(&mut t, reg::DRIVER_FEATURES, 1);
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        assert_eq!(
            mmio_read(&mut t, reg::STATUS),
            ACKNOWLEDGE | DRIVER | FEATURES_OK
        );
    }

    #[test]
    fn status_state_machine_rejects_skips_and_clears() {
        use status::*;
        let (mut t, _, _) = setup();
        // Skipping ACKNOWLEDGE.
        mmio_write(&mut t, reg::STATUS, DRIVER);
        assert_eq!(t.device_status(), 0);
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE);
        // Jumping straight to DRIVER_OK.
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER_OK);
        assert_eq!(t.device_status(), ACKNOWLEDGE);
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
        // Clearing a bit without a reset.
        mmio_write(&mut t, reg::STATUS, DRIVER);
        assert_eq!(t.device_status(), ACKNOWLEDGE | DRIVER);
        // FAILED is always accepted.
        mmio_write(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FAILED);
        assert_eq!(t.device_status(), ACKNOWLEDGE | DRIVER | FAILED);
    }

    #[test]
    fn queue_config_only_between_features_ok_and_driver_ok() {
        let (mut t, dev, _) = setup();
        mmio_write(&mut t, reg::QUEUE_NUM, 4);
        assert_eq!(dev.lock().unwrap().core.queues[0].size(), 16);

        negotiate(&mut t);
        mmio_write(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(mmio_read(&mut t, reg::QUEUE_NUM_MAX), 8);
        mmio_write(&mut t, reg::QUEUE_NUM, 4);
        mmio_write(&mut t, reg::QUEUE_DESC_LOW, 0x1000);
        mmio_write(&mut t, reg::QUEUE_DESC_HIGH, 0x1);
        mmio_write(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(mmio_read(&mut t, reg::QUEUE_READY), 1);
        {
            let d = dev.lock().unwrap();
            let q = &d.core.queues[1];
            assert_eq!(q.size(), 4);
            assert_eq!(q.desc_table(), 0x1_0000_1000);
            assert!(q.ready());
        }
        // Sizes that are not a power of two are refused.
        mmio_write(&mut t, reg::QUEUE_NUM, 3);
        assert_eq!(dev.lock().unwrap().core.queues[1].size(), 4);

        // Queues that do not exist.
        mmio_write(&mut t, reg::QUEUE_SEL, 2);
        assert_eq!(mmio_read(&mut t, reg::QUEUE_NUM_MAX), 0);
        mmio_write(&mut t, reg::QUEUE_READY, 1);
        assert_eq!(mmio_read(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn activation_only_after_driver_ok_with_valid_queues() {
        use status::*;
        let (mut t, dev, _mem) = setup();
        negotiate(&mut t);
        let q0 = GuestQueue::new(GuestAddress(0x1_0000), 16);
        q0.configure(&mut t, 0);
        assert_eq!(dev.lock().unwrap().activations, 0);

        // Queue 1 is not ready: activation must fail and ask for a reset.
        mmio_write(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert_eq!(dev.lock().unwrap().activations, 0);
        assert!(!dev.lock().unwrap().is_activated());
        assert_ne!(t.device_status() & DEVICE_NEEDS_RESET, 0);
        assert_eq!(mmio_read(&mut t, reg::INTERRUPT_STATUS), 2);

        // Reset, then set up both queues properly.
        mmio_write(&mut t, reg::STATUS, 0);
        assert_eq!(t.device_status(), 0);
        assert_eq!(mmio_read(&mut t, reg::INTERRUPT_STATUS), 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        negotiate(&mut t);
        q0.configure(&mut t, 0);
        let q1 = GuestQueue::new(GuestAddress(0x2_0000), 8);
        q1.configure(&mut t, 1);
        mmio_write(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        {
            let d = dev.lock().unwrap();
            assert_eq!(d.activations, 1);
            assert!(d.is_activated());
            assert!(d.core.queues[0].event_idx_enabled());
            // The event loop is told to start.
            assert!(d.core.activate_evt.read().is_ok());
        }

        // Queue registers are frozen after DRIVER_OK.
        mmio_write(&mut t, reg::QUEUE_SEL, 0);
        mmio_write(&mut t, reg::QUEUE_NUM, 2);
        assert_eq!(dev.lock().unwrap().core.queues[0].size(), 16);

        // Reset deactivates and forgets the negotiation.
        mmio_write(&mut t, reg::STATUS, 0);
        let d = dev.lock().unwrap();
        assert!(!d.is_activated());
        assert_eq!(d.core.acked_features, 0);
        assert!(!d.core.queues[0].ready());
    }

    #[test]
    fn rings_outside_memory_fail_activation() {
        use status::*;
        let (mut t, dev, _) = setup();
        negotiate(&mut t);
        GuestQueue::new(GuestAddress(0x1_0000), 16).configure(&mut t, 0);
        // Past the end of guest memory.
        GuestQueue::new(GuestAddress(0x10_0000_0000), 8).configure(&mut t, 1);
        mmio_write(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(!dev.lock().unwrap().is_activated());
        assert_ne!(t.device_status() & DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn notify_and_interrupt_ack() {
        let (mut t, dev, _) = setup();
        mmio_write(&mut t, reg::QUEUE_NOTIFY, 1);
        mmio_write(&mut t, reg::QUEUE_NOTIFY, 9);
        {
            let d = dev.lock().unwrap();
            assert_eq!(d.core.queue_events[1].read().unwrap(), 1);
            assert!(d.core.queue_events[0].read().is_err());
            d.core.irq.trigger(IrqKind::Vring).unwrap();
            d.core.irq.trigger(IrqKind::Config).unwrap();
        }
        assert_eq!(mmio_read(&mut t, reg::INTERRUPT_STATUS), 3);
        mmio_write(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(mmio_read(&mut t, reg::INTERRUPT_STATUS), 2);
    }

    #[test]
    fn config_space_access() {
        let (mut t, _, _) = setup();
        let mut b = [0u8; 4];
        t.read(reg::CONFIG + 2, &mut b);
        assert_eq!(b, [0x33, 0x44, 0x55, 0x66]);
        t.write(reg::CONFIG, &[0xaa]);
        let mut one = [0u8; 1];
        t.read(reg::CONFIG, &mut one);
        assert_eq!(one, [0xaa]);
        t.read(reg::CONFIG + 0x1000, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
