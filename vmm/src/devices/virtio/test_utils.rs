//! A driver-side view of split virtqueues for unit tests: lays out rings in
//! guest memory and programs a transport the way the Linux driver does.

use std::sync::atomic::Ordering;

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions, VolatileSlice,
};

use super::mmio::{status, MmioTransport};
use crate::devices::bus::BusDevice;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// 16 MiB of guest memory at address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// A new guest memory with `mem`'s contents, as a restored VM gets: a
/// restored device must work against it, not the memory it was saved from.
pub fn copy_memory(mem: &GuestMemoryMmap) -> GuestMemoryMmap {
    let copy = guest_memory();
    let mut buf = vec![0u8; 16 << 20];
    mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
    copy.write_slice(&buf, GuestAddress(0)).unwrap();
    copy
}

/// `state` after a trip through JSON, checked to come back unchanged.
pub fn round_trip<T>(state: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(state).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, state);
    back
}

/// The guest bytes at `addr..addr + len` as one slice.
pub fn guest_slice(mem: &GuestMemoryMmap, addr: u64, len: usize) -> VolatileSlice<'_, ()> {
    mem.get_slices(GuestAddress(addr), len, Permissions::ReadWrite)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

pub fn mmio_read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn mmio_write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiates every offered feature, sets up `queues` and sets DRIVER_OK.
pub fn activate(t: &mut MmioTransport, queues: &[&GuestQueue]) {
    activate_without(t, queues, 0);
}

/// [`activate`], declining the offered features in `declined`.
pub fn activate_without(t: &mut MmioTransport, queues: &[&GuestQueue], declined: u64) {
    use status::*;
    mmio_write(t, 0x70, ACKNOWLEDGE);
    mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER);
    for page in 0..2 {
        mmio_write(t, 0x14, page);
        let offered = mmio_read(t, 0x10);
        mmio_write(t, 0x24, page);
        mmio_write(t, 0x20, offered & !((declined >> (32 * page)) as u32));
    }
    mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_ne!(mmio_read(t, 0x70) & FEATURES_OK, 0);
    for (i, q) in queues.iter().enumerate() {
        q.configure(t, i as u32);
    }
    mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(mmio_read(t, 0x70) & DEVICE_NEEDS_RESET, 0);
}

/// One descriptor of a chain a test builds.
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

    pub fn configure(&self, t: &mut MmioTransport, index: u32) {
        let split = |a: GuestAddress| (a.raw_value() as u32, (a.raw_value() >> 32) as u32);
        mmio_write(t, 0x30, index);
        mmio_write(t, 0x38, u32::from(self.size));
        let (lo, hi) = split(self.desc);
        mmio_write(t, 0x80, lo);
        mmio_write(t, 0x84, hi);
        let (lo, hi) = split(self.avail);
        mmio_write(t, 0x90, lo);
        mmio_write(t, 0x94, hi);
        let (lo, hi) = split(self.used);
        mmio_write(t, 0xa0, lo);
        mmio_write(t, 0xa4, hi);
        mmio_write(t, 0x44, 1);
    }

    /// Writes the raw descriptor `index`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc.unchecked_add(16 * u64::from(index));
        mem.write_obj(addr.to_le(), at).unwrap();
        mem.write_obj(len.to_le(), at.unchecked_add(8)).unwrap();
        mem.write_obj(flags.to_le(), at.unchecked_add(12)).unwrap();
        mem.write_obj(next.to_le(), at.unchecked_add(14)).unwrap();
    }

    /// Puts `head` in the avail ring and publishes it.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail_idx % self.size;
        mem.write_obj(
            head.to_le(),
            self.avail.unchecked_add(4 + 2 * u64::from(slot)),
        )
        .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx.to_le(),
            self.avail.unchecked_add(2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Overwrites the published avail index with anything, even nonsense.
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.store(idx.to_le(), self.avail.unchecked_add(2), Ordering::Release)
            .unwrap();
    }

    /// Builds a well-formed chain from free descriptors and publishes it.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let head = self.next_desc;
        for (i, d) in descs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = if d.write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(mem, index, d.addr, d.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
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
        let slot = self.used_seen % self.size;
        let elem = self.used.unchecked_add(4 + 8 * u64::from(slot));
        let id: u32 = mem.read_obj(elem).unwrap();
        let len: u32 = mem.read_obj(elem.unchecked_add(4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id, len))
    }

    /// How many used entries the device has published in total.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.load(self.used.unchecked_add(2), Ordering::Acquire)
            .unwrap()
    }
}
