//! Any sequence of MMIO reads and writes a guest can issue against the
//! virtio-mmio transport of a real block, net or vsock device, with the
//! event loop run between accesses so activations, resets and notifies are
//! acted on. Whatever the guest writes, the VMM must not panic.
//!
//! Input: a device selector byte, then 7-byte records: an op byte (bits 0-1
//! the access width 1/2/4/8, bit 2 write, bit 3 run the event loop after),
//! a little-endian u16 offset and a little-endian u32 value.

#![no_main]

use std::sync::{Arc, Mutex};

use bulkhead_fuzz::virtq::{Manager, MEM_SIZE};
use bulkhead_fuzz::vsock::uds_path;
use bulkhead_vmm::devices::bus::BusDevice;
use bulkhead_vmm::devices::virtio::block::Block;
use bulkhead_vmm::devices::virtio::net::Net;
use bulkhead_vmm::devices::virtio::vsock::{Vsock, DEFAULT_GUEST_CID};
use bulkhead_vmm::devices::virtio::{MmioTransport, VirtioDevice};
use event_manager::{MutEventSubscriber, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn disk() -> &'static std::path::Path {
    static DISK: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> =
        std::sync::OnceLock::new();
    &DISK
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk.img");
            std::fs::write(&path, vec![0; 16 << 10]).unwrap();
            (dir, path)
        })
        .1
}

fn drive<D>(dev: D, records: &[u8])
where
    D: VirtioDevice + MutEventSubscriber + Send + 'static,
{
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let mut transport = MmioTransport::new(mem, dev.clone());
    let mut em = Manager::new().unwrap();
    em.add_subscriber(dev);
    for r in records.chunks_exact(7) {
        let width = 1 << (r[0] & 3);
        let offset = u64::from(u16::from_le_bytes([r[1], r[2]]));
        let value = u64::from(u32::from_le_bytes([r[3], r[4], r[5], r[6]]));
        let bytes = (value | value << 32).to_le_bytes();
        if r[0] & 4 != 0 {
            transport.write(offset, &bytes[..width]);
        } else {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..width]);
        }
        if r[0] & 8 != 0 {
            for _ in 0..8 {
                if em.run_with_timeout(0).unwrap() == 0 {
                    break;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, records)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => drive(Block::new(disk(), which & 0x80 != 0).unwrap(), records),
        1 => drive(Net::new(None, [2, 0, 0, 0, 0, 1]).unwrap(), records),
        _ => drive(Vsock::new(DEFAULT_GUEST_CID, uds_path()).unwrap(), records),
    }
});
