//! A guest driver made of fuzz bytes. The input is a small header followed
//! by a guest memory image: the split rings sit at fixed places in it (see
//! [`Rings`]), so the fuzzer writes descriptor tables, avail rings, indirect
//! tables and request payloads directly, as a hostile guest can. The device
//! is then set up through its real virtio-mmio registers, in the order the
//! Linux driver uses, so the transport's checks apply too.

use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::bus::BusDevice;
use bulkhead_vmm::devices::virtio::features::VIRTIO_F_VERSION_1;
use bulkhead_vmm::devices::virtio::mmio::status;
use bulkhead_vmm::devices::virtio::{MmioTransport, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Small, so out-of-range descriptors are common and memory stays cheap.
pub const MEM_SIZE: usize = 64 << 10;
/// Queue-size selector byte, then the feature bits the driver declines.
pub const HEADER_LEN: usize = 9;

pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// The fuzz input, split.
pub struct Input<'a> {
    size_sel: u8,
    declined: u64,
    /// Copied to guest address 0; the rest of memory is zero.
    pub image: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (header, image) = data.split_at_checked(HEADER_LEN)?;
        Some(Self {
            size_sel: header[0],
            declined: u64::from_le_bytes(header[1..9].try_into().unwrap()),
            image,
        })
    }

    /// A power of two up to `max` (itself one): a size the driver may pick.
    pub fn queue_size(&self, max: u16) -> u16 {
        1 << (u32::from(self.size_sel) % (max.trailing_zeros() + 1))
    }

    /// Guest memory holding the image.
    pub fn memory(&self) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let n = self.image.len().min(MEM_SIZE);
        mem.write_slice(&self.image[..n], GuestAddress(0)).unwrap();
        mem
    }
}

/// Where queue `index` of a device with `size`-entry queues lives: queues
/// back to back from address 0, each desc table, avail ring, used ring,
/// aligned as virtio requires. `fuzz/seeds/gen_seeds.py` lays seeds out the same way.
#[derive(Clone, Copy, Debug)]
pub struct Rings {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Rings {
    pub fn of(size: u16, index: usize) -> Self {
        let n = u64::from(size);
        let align = |a: u64, to: u64| a.div_ceil(to) * to;
        let stride = align(align(16 * n + 6 + 2 * n, 4) + 6 + 8 * n, 16);
        let desc = stride * index as u64;
        let avail = desc + 16 * n;
        let used = align(avail + 6 + 2 * n, 4);
        Self { desc, avail, used }
    }
}

fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiates the offered features less `declined` (VERSION_1 is always
/// kept: without it negotiation fails before any queue is used), sets up
/// `queues` queues of `size` and sets DRIVER_OK. False if the device
/// refused, which the fuzzer can cause by declining what a device needs.
pub fn activate(t: &mut MmioTransport, queues: usize, size: u16, declined: u64) -> bool {
    use status::*;
    let declined = declined & !VIRTIO_F_VERSION_1;
    write(t, 0x70, ACKNOWLEDGE);
    write(t, 0x70, ACKNOWLEDGE | DRIVER);
    for page in 0..2 {
        write(t, 0x14, page);
        let offered = read(t, 0x10);
        write(t, 0x24, page);
        write(t, 0x20, offered & !((declined >> (32 * page)) as u32));
    }
    write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    if read(t, 0x70) & FEATURES_OK == 0 {
        return false;
    }
    for q in 0..queues {
        let rings = Rings::of(size, q);
        write(t, 0x30, q as u32);
        write(t, 0x38, u32::from(size));
        for (reg, addr) in [(0x80, rings.desc), (0x90, rings.avail), (0xa0, rings.used)] {
            write(t, reg, addr as u32);
            write(t, reg + 4, (addr >> 32) as u32);
        }
        write(t, 0x44, 1);
    }
    write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    read(t, 0x70) & DEVICE_NEEDS_RESET == 0
}

/// `dev` behind a transport on the input's memory, activated, with the
/// event loop that serves it already past the activation (which processes
/// whatever the image had queued). `None` if activation failed.
pub fn start<D>(input: &Input<'_>, dev: D, max_size: u16) -> Option<Driver<D>>
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let mem = input.memory();
    let dev = Arc::new(Mutex::new(dev));
    let queues = dev.lock().unwrap().queues().len();
    let mut transport = MmioTransport::new(mem.clone(), dev.clone());
    let mut em = Manager::new().unwrap();
    em.add_subscriber(dev.clone());
    let size = input.queue_size(max_size);
    if !activate(&mut transport, queues, size, input.declined) {
        return None;
    }
    let mut driver = Driver {
        mem,
        dev,
        transport,
        em,
    };
    driver.run();
    Some(driver)
}

/// A started device and its guest.
pub struct Driver<D> {
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<D>>,
    pub transport: MmioTransport,
    pub em: Manager,
}

impl<D: VirtioDevice> Driver<D> {
    /// Notifies queue `index` (as a QueueNotify write) and serves it.
    pub fn kick(&mut self, index: u32) {
        write(&mut self.transport, 0x50, index);
        self.run();
    }

    /// Handles every pending event without waiting for more.
    pub fn run(&mut self) {
        // Bounded: a device that re-arms itself forever would be a hang,
        // which the fuzzer should report rather than this loop hide.
        for _ in 0..64 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                break;
            }
        }
    }
}
