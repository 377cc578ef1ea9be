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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    use event_manager::SubscriberOps;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::block::request::status;
    use crate::devices::virtio::block::test_utils::{
        write_image, Manager, Rig, DATA, DISK_LEN, HDR, STATUS,
    };
    use crate::devices::virtio::device::VirtioDevice;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::persist::MmioTransportState;
    use crate::devices::virtio::test_utils::Desc;
    use crate::devices::virtio::test_utils::{copy_memory, mmio_read, round_trip};

    const IN: u32 = 0;
    const OUT: u32 = 1;
    const FLUSH: u32 = 4;
    const CONFIG_GENERATION: u64 = 0xfc;
    const INTERRUPT_STATUS: u64 = 0x60;

    /// Saves `rig`'s device and transport through JSON and rebuilds them on
    /// a copy of guest memory with `backing`, the way a restore does; the
    /// simulated driver carries on with its queue where it was.
    fn restore(rig: Rig, backing: Option<(&Path, bool)>) -> Rig {
        let state = round_trip(&rig.dev.lock().unwrap().save());
        let regs: MmioTransportState = round_trip(&rig.transport.save());
        let mem = copy_memory(&rig.mem);
        let dev = Arc::new(Mutex::new(Block::restore(&state, backing, &mem).unwrap()));
        let transport = MmioTransport::restore(mem.clone(), dev.clone(), &regs).unwrap();
        let mut em = Manager::new().unwrap();
        em.add_subscriber(dev.clone());
        // The activation event: the queue is watched again.
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        let path = backing.map_or(rig.path.clone(), |(p, _)| p.to_path_buf());
        Rig {
            mem,
            dev,
            transport,
            em,
            path,
            ..rig
        }
    }

    fn empty_slot() -> Rig {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("unused");
        Rig::with_block(dir, path, Block::empty().unwrap())
    }

    fn capacity(rig: &Rig) -> u64 {
        let mut b = [0u8; 8];
        rig.dev.lock().unwrap().read_config(0, &mut b);
        u64::from_le_bytes(b)
    }

    fn config_interrupts(rig: &Rig) -> u32 {
        rig.dev
            .lock()
            .unwrap()
            .core
            .irq
            .status()
            .load(Ordering::SeqCst)
            & 2
    }

    #[test]
    fn same_backing_restores_without_config_change() {
        let mut rig = Rig::new(false);
        assert_eq!(rig.one_sector(IN, 1), status::OK);
        let path = rig.path.clone();
        rig.transport.write(0x30, &0u32.to_le_bytes()); // QUEUE_SEL
        let mut rig = restore(rig, Some((&path, false)));
        // The registers the driver wrote are back, without re-negotiating.
        assert_eq!(mmio_read(&mut rig.transport, 0x70), 0x0f);
        assert_eq!(mmio_read(&mut rig.transport, 0x44), 1); // QUEUE_READY of queue 0
        assert_eq!(mmio_read(&mut rig.transport, CONFIG_GENERATION), 0);
        assert_eq!(config_interrupts(&rig), 0);
        // The queue continues at the saved index, against the new memory.
        assert_eq!(rig.one_sector(IN, 7), status::OK);
        let mut buf = [0u8; 512];
        rig.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert_eq!(rig.queue.used_idx(&rig.mem), 2);
        assert!(rig.dev.lock().unwrap().is_activated());
    }

    #[test]
    fn restore_with_a_different_file_changes_capacity_and_tells_the_driver() {
        let mut rig = Rig::new(false);
        assert_eq!(rig.one_sector(IN, 0), status::OK);
        let new = rig.dir.as_path().join("other.img");
        write_image(&new, 2 * DISK_LEN, |_| 0xa5);
        let mut rig = restore(rig, Some((&new, false)));

        assert_eq!(capacity(&rig), (2 * DISK_LEN / 512) as u64);
        assert_eq!(mmio_read(&mut rig.transport, CONFIG_GENERATION), 1);
        assert_eq!(mmio_read(&mut rig.transport, INTERRUPT_STATUS) & 2, 2);
        assert!(rig.dev.lock().unwrap().core.irq.eventfd().read().is_ok());

        // Reads see the new file, including sectors past the old end.
        assert_eq!(rig.one_sector(IN, (DISK_LEN / 512) as u64 + 3), status::OK);
        let mut buf = [0u8; 512];
        rig.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|&b| b == 0xa5));
        // And writes go to it.
        rig.mem
            .write_slice(&[0x3c; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(rig.one_sector(OUT, 0), status::OK);
        assert!(rig.file()[..512].iter().all(|&b| b == 0x3c));
    }

    #[test]
    fn empty_slot_has_no_capacity_and_fails_io() {
        let mut rig = empty_slot();
        assert_eq!(capacity(&rig), 0);
        assert!(rig.dev.lock().unwrap().disk().is_none());
        // A slot never advertises RO: its backing is chosen later.
        assert_eq!(
            rig.dev.lock().unwrap().avail_features() & VIRTIO_BLK_F_RO,
            0
        );
        assert_eq!(rig.one_sector(IN, 0), status::IOERR);
        assert_eq!(rig.one_sector(OUT, 0), status::IOERR);
        rig.header(FLUSH, 0);
        let st = rig.submit(&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]).1;
        assert_eq!(st, status::IOERR);
        // GET_ID still answers, with an empty serial.
        rig.mem
            .write_slice(&[0xff; 20], GuestAddress(DATA))
            .unwrap();
        rig.header(8, 0);
        let (len, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(DATA, 20), Desc::w(STATUS, 1)]);
        assert_eq!((len, st), (21, status::OK));
        let mut id = [0xffu8; 20];
        rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(id, [0; 20]);
    }

    #[test]
    fn empty_slot_restored_read_only_rejects_writes() {
        let rig = empty_slot();
        let image = rig.dir.as_path().join("ro.img");
        write_image(&image, DISK_LEN, |sector| sector as u8);
        let before = std::fs::read(&image).unwrap();
        let mut rig = restore(rig, Some((&image, true)));
        assert_eq!(capacity(&rig), (DISK_LEN / 512) as u64);
        assert_eq!(config_interrupts(&rig), 2);
        assert_eq!(
            rig.dev.lock().unwrap().avail_features() & VIRTIO_BLK_F_RO,
            0
        );

        rig.mem
            .write_slice(&[0xee; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(rig.one_sector(OUT, 2), status::IOERR);
        assert_eq!(rig.file(), before);
        assert_eq!(rig.one_sector(IN, 2), status::OK);
        let mut buf = [0u8; 512];
        rig.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf.iter().all(|&b| b == 2));
    }

    #[test]
    fn backed_disk_restored_as_empty_slot() {
        let rig = Rig::new(false);
        let mut rig = restore(rig, None);
        assert_eq!(capacity(&rig), 0);
        assert_eq!(mmio_read(&mut rig.transport, CONFIG_GENERATION), 1);
        assert_eq!(rig.one_sector(IN, 0), status::IOERR);
    }

    #[test]
    fn inactive_device_restores_inactive() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("d.img");
        write_image(&path, DISK_LEN, |_| 0);
        let block = Block::new(&path, true).unwrap();
        let state = round_trip(&block.save());
        assert!(!state.core.activated);
        let mem = copy_memory(&crate::devices::virtio::test_utils::guest_memory());
        let restored = Block::restore(&state, Some((&path, true)), &mem).unwrap();
        assert!(!restored.is_activated());
        assert!(!restored.config_change_pending);
        // A cold-booted read-only disk keeps advertising RO.
        assert_ne!(restored.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert!(restored.core.activate_evt.read().is_err());
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_device() {
        let rig = Rig::new(false);
        let good = rig.dev.lock().unwrap().save();
        let mem = copy_memory(&rig.mem);
        let expect_err = |state: &BlockState| {
            let err = Block::restore(state, Some((&rig.path, false)), &mem).unwrap_err();
            assert!(err.to_string().starts_with("virtio-blk:"), "{err}");
            err
        };

        let mut bad = good.clone();
        bad.core.queues[0].size = 3;
        let err = expect_err(&bad);
        assert!(matches!(err, RestoreError::Queue { index: 0, .. }), "{err}");

        let mut bad = good.clone();
        bad.core.queues[0].desc_table = 0x10_0000_0000;
        let err = expect_err(&bad);
        assert!(
            matches!(err, RestoreError::QueueOutsideMemory { index: 0, .. }),
            "{err}"
        );

        let mut bad = good.clone();
        bad.core.queues[0].max_size = 1024;
        let err = expect_err(&bad);
        assert!(matches!(err, RestoreError::QueueMaxSize { .. }), "{err}");

        let mut bad = good.clone();
        bad.core.queues.push(bad.core.queues[0].clone());
        let err = expect_err(&bad);
        assert!(matches!(err, RestoreError::QueueCount { .. }), "{err}");

        let mut bad = good.clone();
        bad.core.acked_features |= 1 << 40;
        let err = expect_err(&bad);
        assert!(matches!(err, RestoreError::Features { .. }), "{err}");

        // A missing backing file names the file.
        let err = Block::restore(&good, Some((Path::new("/nonexistent/b.img"), false)), &mem)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/b.img"), "{err}");
    }

    #[test]
    fn transport_must_agree_that_the_driver_finished() {
        let rig = Rig::new(false);
        let state = rig.dev.lock().unwrap().save();
        let mut regs = rig.transport.save();
        regs.device_status &= !crate::devices::virtio::mmio::status::DRIVER_OK;
        let mem = copy_memory(&rig.mem);
        let dev = Arc::new(Mutex::new(
            Block::restore(&state, Some((&rig.path, false)), &mem).unwrap(),
        ));
        let err = MmioTransport::restore(mem, dev, &regs).err().unwrap();
        assert!(
            matches!(err, RestoreError::TransportStatus { device_type: 2, .. }),
            "{err}"
        );
    }
}
