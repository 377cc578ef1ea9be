//! The driver side of virtqueues for the benchmarks: rings laid out in
//! guest memory and a transport programmed the way Linux does it. (The
//! crate's own test helpers are `#[cfg(test)]`, out of reach of benches.)

// Each bench target uses its own subset of these helpers.
#![allow(dead_code)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::bus::BusDevice;
use bulkhead_vmm::devices::virtio::mmio::status;
use bulkhead_vmm::devices::virtio::MmioTransport;
use event_manager::{EventManager, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// 16 MiB of guest memory at address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("16 MiB of memory")
}

fn mmio_read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn mmio_write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiates every offered feature, sets up `queues`, sets DRIVER_OK.
pub fn activate(t: &mut MmioTransport, queues: &[&GuestQueue]) {
    use status::*;
    mmio_write(t, 0x70, ACKNOWLEDGE);
    mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER);
    for page in 0..2 {
        mmio_write(t, 0x14, page);
        let offered = mmio_read(t, 0x10);
        mmio_write(t, 0x24, page);
        mmio_write(t, 0x20, offered);
    }
    mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (i, q) in queues.iter().enumerate() {
        q.configure(t, i as u32);
    }
    mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(
        mmio_read(t, 0x70) & DEVICE_NEEDS_RESET,
        0,
        "device refused activation"
    );
}

/// One descriptor of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Desc {
    pub fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }
    pub fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// The driver's side of one split virtqueue.
pub struct GuestQueue {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    pub fn new(base: GuestAddress, size: u16) -> Self {
        let avail = base.unchecked_add(16 * u64::from(size));
        let used_unaligned = avail.raw_value() + 6 + 2 * u64::from(size);
        let used = GuestAddress((used_unaligned + 3) & !3);
        Self {
            size,
            desc: base,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn configure(&self, t: &mut MmioTransport, index: u32) {
        let split = |a: GuestAddress| (a.raw_value() as u32, (a.raw_value() >> 32) as u32);
        mmio_write(t, 0x30, index);
        mmio_write(t, 0x38, u32::from(self.size));
        for (reg, addr) in [(0x80, self.desc), (0x90, self.avail), (0xa0, self.used)] {
            let (lo, hi) = split(addr);
            mmio_write(t, reg, lo);
            mmio_write(t, reg + 4, hi);
        }
        mmio_write(t, 0x44, 1);
    }

    /// A device-side `Queue` over the same rings, as the transport would
    /// configure it.
    pub fn device_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("valid queue size");
        q.set_size(self.size);
        q.set_desc_table_address(
            Some(self.desc.raw_value() as u32),
            Some((self.desc.raw_value() >> 32) as u32),
        );
        q.set_avail_ring_address(
            Some(self.avail.raw_value() as u32),
            Some((self.avail.raw_value() >> 32) as u32),
        );
        q.set_used_ring_address(
            Some(self.used.raw_value() as u32),
            Some((self.used.raw_value() >> 32) as u32),
        );
        q.set_ready(true);
        q
    }

    fn write_desc(&self, mem: &GuestMemoryMmap, index: u16, d: &Desc, flags: u16, next: u16) {
        let at = self.desc.unchecked_add(16 * u64::from(index));
        mem.write_obj(d.addr.to_le(), at).unwrap();
        mem.write_obj(d.len.to_le(), at.unchecked_add(8)).unwrap();
        mem.write_obj(flags.to_le(), at.unchecked_add(12)).unwrap();
        mem.write_obj(next.to_le(), at.unchecked_add(14)).unwrap();
    }

    /// Puts `head` in the avail ring and publishes it.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail_idx % self.size;
        let at = self.avail.unchecked_add(4 + 2 * u64::from(slot));
        mem.write_obj(head.to_le(), at).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx.to_le(),
            self.avail.unchecked_add(2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Writes a chain into free descriptors (without publishing it).
    pub fn write_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let mut flags = if d.write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(mem, index, d, flags, (index + 1) % self.size);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        head
    }

    /// Builds a chain from free descriptors and publishes it.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.write_chain(mem, descs);
        self.publish(mem, head);
        head
    }

    /// The next entry the device put in the used ring, as (head, length).
    pub fn next_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u32, u32)> {
        let idx: u16 = mem
            .load(self.used.unchecked_add(2), Ordering::Acquire)
            .unwrap();
        if idx == self.used_seen {
            return None;
        }
        let elem = self
            .used
            .unchecked_add(4 + 8 * u64::from(self.used_seen % self.size));
        let id: u32 = mem.read_obj(elem).unwrap();
        let len: u32 = mem.read_obj(elem.unchecked_add(4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }
}

/// The 44-byte virtio-vsock packet header.
#[derive(Clone, Copy, Debug, Default)]
pub struct VsockHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl VsockHeader {
    pub fn write(&self, mem: &GuestMemoryMmap, at: u64) {
        let mut b = [0u8; 44];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        mem.write_slice(&b, GuestAddress(at)).unwrap();
    }

    pub fn read(mem: &GuestMemoryMmap, at: u64) -> Self {
        let mut b = [0u8; 44];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        Self {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}
