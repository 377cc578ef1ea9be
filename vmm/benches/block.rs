//! virtio-blk request handling: a 4 KiB read or write from the queue kick
//! through the event loop, the disk file (page cache) and the used ring;
//! and the request alone, parsed and executed without the event loop.

mod support;

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::virtio::block::request::{status, Request};
use bulkhead_vmm::devices::virtio::block::{Block, DiskImage};
use bulkhead_vmm::devices::virtio::queue::pop_chain;
use bulkhead_vmm::devices::virtio::{DeviceEventManager, MmioTransport, VirtioDevice};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event_manager::SubscriberOps;
use support::{activate, guest_memory, Desc, GuestQueue};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK_LEN: usize = 1 << 20;
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;

fn disk_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.as_path().join("disk.img");
    let contents: Vec<u8> = (0..DISK_LEN).map(|i| (i / 512) as u8).collect();
    std::fs::write(&path, contents).expect("cannot write the bench disk");
    path
}

fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

/// A block device behind its transport and event loop, as in a VM.
struct Rig {
    _dir: TempDir,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Block>>,
    _transport: MmioTransport,
    queue: GuestQueue,
    em: DeviceEventManager,
}

impl Rig {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let path = disk_file(&dir);
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(Block::new(&path, false).unwrap()));
        let mut transport = MmioTransport::new(mem.clone(), dev.clone());
        let mut em = DeviceEventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let queue = GuestQueue::new(GuestAddress(0x1000), 256);
        activate(&mut transport, &[&queue]);
        // The activation event: the device starts watching its queue.
        em.run_with_timeout(1000).unwrap();
        Rig {
            _dir: dir,
            mem,
            dev,
            _transport: transport,
            queue,
            em,
        }
    }

    /// Publishes `descs`, kicks the queue, runs the event loop once and
    /// takes the completion; returns the status byte.
    fn submit(&mut self, descs: &[Desc]) -> u8 {
        self.queue.add_chain(&self.mem, descs);
        self.dev.lock().unwrap().queue_events()[0].write(1).unwrap();
        self.em.run_with_timeout(1000).unwrap();
        self.queue
            .next_used(&self.mem)
            .expect("request not completed");
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

fn through_event_loop(c: &mut Criterion) {
    let mut group = c.benchmark_group("block/event_loop");
    group.throughput(Throughput::Bytes(4096));
    let mut rig = Rig::new();
    header(&rig.mem, VIRTIO_BLK_T_IN, 8);
    let read = [Desc::r(HDR, 16), Desc::w(DATA, 4096), Desc::w(STATUS, 1)];
    assert_eq!(rig.submit(&read), status::OK);
    group.bench_function("read_4k", |b| b.iter(|| black_box(rig.submit(&read))));

    let mut rig = Rig::new();
    header(&rig.mem, VIRTIO_BLK_T_OUT, 16);
    let write = [Desc::r(HDR, 16), Desc::r(DATA, 4096), Desc::w(STATUS, 1)];
    assert_eq!(rig.submit(&write), status::OK);
    group.bench_function("write_4k", |b| b.iter(|| black_box(rig.submit(&write))));
    group.finish();
}

fn request_alone(c: &mut Criterion) {
    let dir = TempDir::new().unwrap();
    let mut disk = DiskImage::open(&disk_file(&dir), false).unwrap();
    let mem = guest_memory();
    header(&mem, VIRTIO_BLK_T_IN, 8);
    let mut gq = GuestQueue::new(GuestAddress(0x1000), 256);
    gq.add_chain(
        &mem,
        &[Desc::r(HDR, 16), Desc::w(DATA, 4096), Desc::w(STATUS, 1)],
    );
    let mut q = gq.device_queue();
    let mut group = c.benchmark_group("block/request");
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("parse_execute_read_4k", |b| {
        b.iter(|| {
            q.set_next_avail(0);
            let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
            let request = Request::parse(&mem, chain).unwrap();
            black_box(request.execute(&mut disk, &mem))
        })
    });
    group.finish();
}

criterion_group!(benches, through_event_loop, request_alone);
criterion_main!(benches);
