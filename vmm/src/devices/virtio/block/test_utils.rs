//! A block device driven by a simulated guest driver, for unit tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

use super::device::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_utils::{activate, guest_memory, Desc, GuestQueue};

pub const HDR: u64 = 0x10_0000;
pub const DATA: u64 = 0x20_0000;
pub const STATUS: u64 = 0x30_0000;
pub const DISK_LEN: usize = 64 * 1024;

pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A guest driver with one request queue, a device behind a real transport,
/// and the event loop that serves it.
pub struct Rig {
    pub dir: TempDir,
    pub path: PathBuf,
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<Block>>,
    pub transport: MmioTransport,
    pub queue: GuestQueue,
    pub em: Manager,
}

/// Writes an image of `len` bytes whose sector `n` is filled with `fill(n)`.
pub fn write_image(path: &Path, len: usize, fill: impl Fn(usize) -> u8) {
    let contents: Vec<u8> = (0..len).map(|i| fill(i / 512)).collect();
    std::fs::write(path, contents).unwrap();
}

impl Rig {
    /// A `DISK_LEN` image whose sector `n` holds the byte `n`.
    pub fn new(read_only: bool) -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("disk.img");
        write_image(&path, DISK_LEN, |sector| sector as u8);
        let block = Block::new(&path, read_only).unwrap();
        Self::with_block(dir, path, block)
    }

    /// Drives `block` through a driver's setup until it is active.
    pub fn with_block(dir: TempDir, path: PathBuf, block: Block) -> Self {
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(block));
        let mut transport = MmioTransport::new(mem.clone(), dev.clone());
        let mut em = Manager::new().unwrap();
        em.add_subscriber(dev.clone());
        let queue = GuestQueue::new(GuestAddress(0x1000), 16);
        activate(&mut transport, &[&queue]);
        // Handle the activation event: registers the queue eventfd.
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        Self {
            dir,
            path,
            mem,
            dev,
            transport,
            queue,
            em,
        }
    }

    pub fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Publishes `descs`, kicks the queue and returns (used len, status).
    pub fn submit(&mut self, descs: &[Desc]) -> (u32, u8) {
        let head = self.queue.add_chain(&self.mem, descs);
        self.kick();
        let (id, len) = self
            .queue
            .next_used(&self.mem)
            .expect("request not completed");
        assert_eq!(id, u32::from(head));
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    /// A request of `kind` at `sector` moving one sector through DATA.
    pub fn one_sector(&mut self, kind: u32, sector: u64) -> u8 {
        self.header(kind, sector);
        let data = if kind == 1 {
            Desc::r(DATA, 512)
        } else {
            Desc::w(DATA, 512)
        };
        self.submit(&[Desc::r(HDR, 16), data, Desc::w(STATUS, 1)]).1
    }

    pub fn kick(&mut self) {
        self.dev.lock().unwrap().core.queue_events[0]
            .write(1)
            .unwrap();
        assert_eq!(self.em.run_with_timeout(1000).unwrap(), 1);
    }

    pub fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}
