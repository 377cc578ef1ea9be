//! The virtio-blk device: one request queue served synchronously on the
//! event loop against a raw image.

use std::path::Path;

use vm_memory::{Bytes, GuestMemoryMmap};

use super::disk::{BlockError, DiskImage};
use super::request::{status, Request};
use crate::devices::virtio::device::{read_config_bytes, DeviceCore, VirtioDevice};
use crate::devices::virtio::features::{
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::devices::virtio::interrupt::IrqKind;
use crate::devices::virtio::queue::{drain_queue, GuestChain};

const VIRTIO_ID_BLOCK: u32 = 2;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub(super) const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// What every block device offers; cold-booted read-only disks add RO.
pub(super) const BASE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_BLK_F_SEG_MAX
    | VIRTIO_BLK_F_FLUSH;

pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// A request needs a header and a status descriptor besides its data.
const SEG_MAX: u32 = BLOCK_QUEUE_SIZE as u32 - 2;
/// capacity, size_max, seg_max, geometry, blk_size of struct virtio_blk_config.
const CONFIG_LEN: usize = 24;

/// A virtio block device: a raw image, or an empty slot whose backing is
/// chosen when a snapshot is restored.
#[derive(Debug)]
pub struct Block {
    pub(super) core: DeviceCore,
    pub(super) disk: Option<DiskImage>,
    config: [u8; CONFIG_LEN],
    pub(super) queue_events_registered: bool,
    /// Set by restore when the backing changed under an active driver: the
    /// config interrupt is raised once the event loop has the device again.
    pub(super) config_change_pending: bool,
}

impl Block {
    /// Opens the raw image at `path`, read-write unless `read_only`. A
    /// read-only disk advertises VIRTIO_BLK_F_RO, so the guest mounts it
    /// read-only instead of discovering that writes fail.
    pub fn new(path: impl AsRef<Path>, read_only: bool) -> Result<Self, BlockError> {
        let path = path.as_ref();
        let disk = DiskImage::open(path, read_only)?;
        let features = if read_only {
            BASE_FEATURES | VIRTIO_BLK_F_RO
        } else {
            BASE_FEATURES
        };
        let core = new_core(features).map_err(|source| BlockError::Setup {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::with_parts(core, Some(disk)))
    }

    /// A slot without a backing file: capacity 0, every I/O request fails.
    /// It never advertises RO, because a slot's features are fixed at boot
    /// while its backing (read-only or not) is chosen at restore time.
    pub fn empty() -> Result<Self, BlockError> {
        let core = new_core(BASE_FEATURES).map_err(BlockError::SlotSetup)?;
        Ok(Self::with_parts(core, None))
    }

    pub(super) fn with_parts(core: DeviceCore, disk: Option<DiskImage>) -> Self {
        let sectors = disk.as_ref().map_or(0, DiskImage::sectors);
        Self {
            core,
            disk,
            config: config_space(sectors),
            queue_events_registered: false,
            config_change_pending: false,
        }
    }

    /// The backing image; `None` for an empty slot.
    pub fn disk(&self) -> Option<&DiskImage> {
        self.disk.as_ref()
    }

    /// Capacity in sectors as the guest sees it in config space.
    pub fn capacity(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.config[0..8]);
        u64::from_le_bytes(b)
    }

    /// Serves every request the driver has queued.
    pub(super) fn process_queue(&mut self) {
        let Some(mem) = self.core.mem.as_ref() else {
            return;
        };
        let mut disk = self.disk.as_mut();
        let queue = &mut self.core.queues[0];
        match drain_queue(queue, mem, |chain| {
            handle_chain(disk.as_deref_mut(), mem, chain)
        }) {
            Ok(true) => {
                if let Err(e) = self.core.irq.trigger(IrqKind::Vring) {
                    log::error!("virtio-blk: cannot interrupt the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::error!("virtio-blk: request queue is broken: {e}"),
        }
    }
}

/// Serves one chain; returns how many bytes went into its writable buffers.
fn handle_chain(disk: Option<&mut DiskImage>, mem: &GuestMemoryMmap, chain: GuestChain<'_>) -> u32 {
    let (status_addr, code, written) = match Request::parse(mem, chain) {
        Ok(req) => {
            let (code, written) = req.execute_on(disk, mem);
            (req.status, code, written)
        }
        Err(failure) => {
            log::warn!("virtio-blk: malformed request: {}", failure.error);
            match failure.status {
                Some(addr) => (addr, status::IOERR, 0),
                // Nowhere to report the error: hand the chain back untouched.
                None => return 0,
            }
        }
    };
    if let Err(e) = mem.write_obj(code, status_addr) {
        log::warn!("virtio-blk: cannot write request status: {e}");
        return 0;
    }
    written + 1
}

fn new_core(features: u64) -> std::io::Result<DeviceCore> {
    DeviceCore::new(features, &[BLOCK_QUEUE_SIZE])
}

/// struct virtio_blk_config for a disk of `sectors` 512-byte sectors.
fn config_space(sectors: u64) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[0..8].copy_from_slice(&sectors.to_le_bytes());
    config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    config[20..24].copy_from_slice(&512u32.to_le_bytes());
    config
}

impl VirtioDevice for Block {
    fn core(&self) -> &DeviceCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut DeviceCore {
        &mut self.core
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::warn!("virtio-blk: ignoring write to read-only config at {offset:#x}");
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::devices::virtio::block::test_utils::{Rig, DATA, DISK_LEN, HDR, STATUS};
    use crate::devices::virtio::test_utils::Desc;

    #[test]
    fn config_space() {
        let rig = Rig::new(true);
        let dev = rig.dev.lock().unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), (DISK_LEN / 512) as u64);
        assert_ne!(dev.acked_features() & VIRTIO_BLK_F_RO, 0);
        let mut seg = [0u8; 4];
        dev.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    }

    #[test]
    fn read_write_flush_round_trip() {
        let mut rig = Rig::new(false);
        // Read sectors 3..5 into guest memory.
        rig.header(0, 3);
        let (len, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(DATA, 1024), Desc::w(STATUS, 1)]);
        assert_eq!((len, st), (1025, status::OK));
        let mut buf = vec![0u8; 1024];
        rig.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 3));
        assert!(buf[512..].iter().all(|&b| b == 4));

        // Write two sectors at sector 10, split over two data descriptors.
        rig.mem
            .write_slice(&[0xab; 512], GuestAddress(DATA))
            .unwrap();
        rig.mem
            .write_slice(&[0xcd; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        rig.header(1, 10);
        let (len, st) = rig.submit(&[
            Desc::r(HDR, 16),
            Desc::r(DATA, 512),
            Desc::r(DATA + 0x1000, 512),
            Desc::w(STATUS, 1),
        ]);
        assert_eq!((len, st), (1, status::OK));
        let file = rig.file();
        assert!(file[10 * 512..11 * 512].iter().all(|&b| b == 0xab));
        assert!(file[11 * 512..12 * 512].iter().all(|&b| b == 0xcd));
        assert!(file[12 * 512..13 * 512].iter().all(|&b| b == 12));

        rig.header(4, 0);
        let (len, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]);
        assert_eq!((len, st), (1, status::OK));
    }

    #[test]
    fn get_id_returns_serial() {
        let mut rig = Rig::new(true);
        rig.header(8, 0);
        let (len, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(DATA, 20), Desc::w(STATUS, 1)]);
        assert_eq!((len, st), (21, status::OK));
        let mut id = [0u8; 20];
        rig.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, rig.dev.lock().unwrap().disk().unwrap().serial());
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mut rig = Rig::new(true);
        let before = rig.file();
        rig.mem
            .write_slice(&[0xee; 512], GuestAddress(DATA))
            .unwrap();
        rig.header(1, 0);
        let (_, st) = rig.submit(&[Desc::r(HDR, 16), Desc::r(DATA, 512), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::IOERR);
        assert_eq!(rig.file(), before);
        // Reads still work, and flush is harmless.
        rig.header(0, 1);
        let (_, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::OK);
        rig.header(4, 0);
        assert_eq!(
            rig.submit(&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]).1,
            status::OK
        );
    }

    #[test]
    fn out_of_bounds_and_unsupported() {
        let mut rig = Rig::new(false);
        let before = rig.file();
        let last = (DISK_LEN / 512) as u64;
        // Straddling the end.
        rig.header(1, last - 1);
        let (_, st) = rig.submit(&[Desc::r(HDR, 16), Desc::r(DATA, 1024), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::IOERR);
        // A sector number whose byte offset overflows.
        rig.header(0, u64::MAX / 2);
        let (_, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::IOERR);
        // Not a whole sector.
        rig.header(1, 0);
        let (_, st) = rig.submit(&[Desc::r(HDR, 16), Desc::r(DATA, 100), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::IOERR);
        assert_eq!(rig.file(), before);
        // Discard is not offered.
        rig.header(11, 0);
        let (len, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]);
        assert_eq!((len, st), (1, status::UNSUPP));
    }

    #[test]
    fn malformed_chains() {
        let mut rig = Rig::new(false);
        let before = rig.file();

        // Header too short.
        rig.header(0, 0);
        let (len, st) = rig.submit(&[Desc::r(HDR, 8), Desc::w(STATUS, 1)]);
        assert_eq!((len, st), (1, status::IOERR));

        // Header in a device-writable descriptor.
        rig.header(1, 0);
        let (_, st) = rig.submit(&[Desc::w(HDR, 16), Desc::r(DATA, 512), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::IOERR);

        // Status descriptor is device-readable: nowhere to report, chain dropped.
        rig.header(1, 0);
        let (len, st) = rig.submit(&[Desc::r(HDR, 16), Desc::r(DATA, 512), Desc::r(STATUS, 1)]);
        assert_eq!((len, st), (0, 0xff));

        // Data buffer outside guest memory.
        rig.header(0, 0);
        let (len, st) = rig.submit(&[
            Desc::r(HDR, 16),
            Desc::w(0x10_0000_0000, 512),
            Desc::w(STATUS, 1),
        ]);
        assert_eq!((len, st), (0, 0xff));

        // A buffer that runs off the end of guest memory.
        rig.header(0, 0);
        let (len, _) = rig.submit(&[
            Desc::r(HDR, 16),
            Desc::w((16 << 20) - 256, 512),
            Desc::w(STATUS, 1),
        ]);
        assert_eq!(len, 0);

        // A chain whose next index points outside the table ends early.
        rig.header(1, 0);
        let q = &rig.queue;
        q.write_desc(&rig.mem, 10, HDR, 16, 1, 999);
        rig.queue.publish(&rig.mem, 10);
        rig.kick();
        assert_eq!(rig.queue.next_used(&rig.mem), Some((10, 0)));

        // A descriptor loop is cut off by the chain length limit.
        rig.header(1, 0);
        rig.queue.write_desc(&rig.mem, 11, HDR, 16, 1, 12);
        rig.queue.write_desc(&rig.mem, 12, DATA, 512, 1, 11);
        rig.queue.publish(&rig.mem, 11);
        rig.kick();
        assert_eq!(rig.queue.next_used(&rig.mem), Some((11, 0)));

        assert_eq!(rig.file(), before);

        // The device still works afterwards.
        rig.header(0, 2);
        let (_, st) = rig.submit(&[Desc::r(HDR, 16), Desc::w(DATA, 512), Desc::w(STATUS, 1)]);
        assert_eq!(st, status::OK);
    }

    #[test]
    fn garbage_avail_index_does_not_hang() {
        let mut rig = Rig::new(false);
        rig.queue.set_avail_idx(&rig.mem, 1000);
        rig.kick();
        assert_eq!(rig.queue.used_idx(&rig.mem), 0);
    }

    #[test]
    fn interrupt_after_completion() {
        let mut rig = Rig::new(false);
        let irq = rig.dev.lock().unwrap().core.irq.status();
        rig.header(4, 0);
        rig.submit(&[Desc::r(HDR, 16), Desc::w(STATUS, 1)]);
        assert_eq!(irq.load(std::sync::atomic::Ordering::SeqCst) & 1, 1);
    }
}
