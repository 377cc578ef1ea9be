//! Virtqueue hot paths: taking a descriptor chain off the avail ring and
//! walking it, parsing a block request from it, draining a batch.

mod support;

use std::hint::black_box;

use bulkhead_vmm::devices::virtio::block::request::Request;
use bulkhead_vmm::devices::virtio::queue::{drain_queue, pop_chain};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use support::{guest_memory, Desc, GuestQueue};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const DATA: u64 = 0x10_0000;

fn pop_and_walk(c: &mut Criterion) {
    let mem = guest_memory();
    let mut group = c.benchmark_group("virtqueue/pop_and_walk_chain");
    for len in [1u16, 3, 16] {
        let mut gq = GuestQueue::new(GuestAddress(0x1000), 256);
        let descs: Vec<Desc> = (0..u64::from(len))
            .map(|i| Desc::r(DATA + i * 0x1000, 512))
            .collect();
        gq.add_chain(&mem, &descs);
        let mut q = gq.device_queue();
        group.throughput(Throughput::Elements(u64::from(len)));
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| {
                // The same published chain, taken again each time.
                q.set_next_avail(0);
                let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
                black_box(chain.map(|d| d.len()).sum::<u32>())
            })
        });
    }
    group.finish();
}

fn parse_block_request(c: &mut Criterion) {
    let mem = guest_memory();
    let mut gq = GuestQueue::new(GuestAddress(0x1000), 256);
    // A 4 KiB read framed like Linux: header, data, status.
    mem.write_obj(0u32, GuestAddress(0x8_0000)).unwrap();
    mem.write_obj(8u64, GuestAddress(0x8_0008)).unwrap();
    gq.add_chain(
        &mem,
        &[
            Desc::r(0x8_0000, 16),
            Desc::w(DATA, 4096),
            Desc::w(0x9_0000, 1),
        ],
    );
    let mut q = gq.device_queue();
    c.bench_function("virtqueue/parse_block_request", |b| {
        b.iter(|| {
            q.set_next_avail(0);
            let chain = pop_chain(&mut q, &mem).unwrap().unwrap();
            black_box(Request::parse(&mem, chain).unwrap().sector)
        })
    });
}

fn drain_batch(c: &mut Criterion) {
    const BATCH: u16 = 64;
    let mem = guest_memory();
    let mut gq = GuestQueue::new(GuestAddress(0x1000), 256);
    for i in 0..u64::from(BATCH) {
        gq.add_chain(
            &mem,
            &[
                Desc::r(DATA + i * 0x1000, 64),
                Desc::w(DATA + i * 0x1000 + 64, 64),
            ],
        );
    }
    let mut q = gq.device_queue();
    let mut group = c.benchmark_group("virtqueue");
    group.throughput(Throughput::Elements(u64::from(BATCH)));
    group.bench_function("drain_64_chains", |b| {
        b.iter(|| {
            q.set_next_avail(0);
            q.set_next_used(0);
            let notify = drain_queue(&mut q, &mem, |chain| chain.count() as u32).unwrap();
            black_box(notify)
        })
    });
    group.finish();
}

criterion_group!(benches, pop_and_walk, parse_block_request, drain_batch);
criterion_main!(benches);
