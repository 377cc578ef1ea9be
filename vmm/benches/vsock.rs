//! virtio-vsock packet handling on an established connection: a 4 KiB
//! data packet from the guest's TX queue to the host Unix socket, and 4 KiB
//! from the host socket into a guest RX buffer, each through the real
//! device, muxer and event loop.

mod support;

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use bulkhead_vmm::devices::virtio::vsock::packet::{op, HOST_CID, TYPE_STREAM};
use bulkhead_vmm::devices::virtio::vsock::{Vsock, VSOCK_QUEUE_SIZE};
use bulkhead_vmm::devices::virtio::{DeviceEventManager, MmioTransport, VirtioDevice};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event_manager::SubscriberOps;
use support::{activate, guest_memory, Desc, GuestQueue, VsockHeader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

const CID: u32 = 3;
const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 1234;
const HDR_LEN: u32 = 44;
const PAYLOAD: usize = 4096;
/// Two descriptors each (header, data): as many as the queue holds.
const RX_BUFFERS: u16 = VSOCK_QUEUE_SIZE / 2;
/// What the guest says it can buffer: the host may send this much unread.
const GUEST_BUF: u32 = 256 * 1024;
const TXQ: usize = 1;

/// A guest driver with one connection to a host listener.
struct Guest {
    _dir: TempDir,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    _transport: MmioTransport,
    em: DeviceEventManager,
    rxq: GuestQueue,
    txq: GuestQueue,
    /// RX buffer (header, data) addresses by chain head.
    rx_bufs: Vec<(u64, u64)>,
    host: UnixStream,
    /// Payload bytes the guest consumed, reported back as credit.
    fwd_cnt: u32,
}

impl Guest {
    fn connected() -> Self {
        let dir = TempDir::new().unwrap();
        let uds = dir.as_path().join("v.sock");
        let listener = UnixListener::bind(dir.as_path().join(format!("v.sock_{HOST_PORT}")))
            .expect("cannot bind the host listener");
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(Vsock::new(CID, &uds).unwrap()));
        let mut transport = MmioTransport::new(mem.clone(), dev.clone());
        let mut em = DeviceEventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let rxq = GuestQueue::new(GuestAddress(0x1_0000), VSOCK_QUEUE_SIZE);
        let txq = GuestQueue::new(GuestAddress(0x2_0000), VSOCK_QUEUE_SIZE);
        let evq = GuestQueue::new(GuestAddress(0x3_0000), VSOCK_QUEUE_SIZE);
        activate(&mut transport, &[&rxq, &txq, &evq]);
        // A placeholder until the connection exists.
        let (host, _) = UnixStream::pair().unwrap();
        let mut g = Guest {
            _dir: dir,
            mem,
            dev,
            _transport: transport,
            em,
            rxq,
            txq,
            rx_bufs: Vec::new(),
            host,
            fwd_cnt: 0,
        };
        g.pump();
        for i in 0..u64::from(RX_BUFFERS) {
            let hdr = 0x10_0000 + i * 0x2000;
            g.rx_bufs.push((hdr, hdr + 0x1000));
            g.post_rx(i as usize);
        }
        g.kick(0);
        g.send(op::REQUEST, 0, &[]);
        let (_, resp) = g.recv().expect("no answer to the connection request");
        assert_eq!(resp.op, op::RESPONSE);
        g.host = listener.accept().unwrap().0;
        g
    }

    /// Runs the event loop until nothing is pending.
    fn pump(&mut self) {
        while self.em.run_with_timeout(0).unwrap() > 0 {}
    }

    fn kick(&mut self, queue: usize) {
        self.dev.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
        self.pump();
    }

    /// Hands RX buffer `i` (back) to the device, unannounced.
    fn post_rx(&mut self, i: usize) {
        let (hdr, data) = self.rx_bufs[i];
        let head = self.rxq.write_chain(
            &self.mem,
            &[Desc::w(hdr, HDR_LEN), Desc::w(data, PAYLOAD as u32)],
        );
        // Buffers are written in order, so the head is the buffer index
        // times two descriptors.
        debug_assert_eq!(usize::from(head / 2) % usize::from(RX_BUFFERS), i);
        self.rxq.publish(&self.mem, head);
    }

    fn send(&mut self, op_: u16, len: u32, data_at: &[Desc]) {
        let h = VsockHeader {
            src_cid: u64::from(CID),
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: HOST_PORT,
            len,
            type_: TYPE_STREAM,
            op: op_,
            buf_alloc: GUEST_BUF,
            fwd_cnt: self.fwd_cnt,
            ..Default::default()
        };
        h.write(&self.mem, 0x4_0000);
        let mut chain = vec![Desc::r(0x4_0000, HDR_LEN)];
        chain.extend_from_slice(data_at);
        self.txq.add_chain(&self.mem, &chain);
        self.kick(TXQ);
    }

    /// The next packet the device delivered; its buffer goes back to the
    /// device right away.
    fn recv(&mut self) -> Option<(u32, VsockHeader)> {
        let (head, _) = self.rxq.next_used(&self.mem)?;
        let i = (head / 2) as usize % usize::from(RX_BUFFERS);
        let h = VsockHeader::read(&self.mem, self.rx_bufs[i].0);
        self.post_rx(i);
        Some((h.len, h))
    }
}

fn guest_to_host(c: &mut Criterion) {
    let mut g = Guest::connected();
    g.mem
        .write_slice(&[0x5a; PAYLOAD], GuestAddress(0x5_0000))
        .unwrap();
    let mut buf = vec![0u8; PAYLOAD];
    let mut group = c.benchmark_group("vsock");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.bench_function("tx_guest_to_host_4k", |b| {
        b.iter(|| {
            g.send(op::RW, PAYLOAD as u32, &[Desc::r(0x5_0000, PAYLOAD as u32)]);
            g.host.read_exact(&mut buf).unwrap();
            // Credit updates the device sends now and then.
            while g.recv().is_some() {}
            black_box(buf[0])
        })
    });
    group.finish();
}

fn host_to_guest(c: &mut Criterion) {
    let mut g = Guest::connected();
    let data = [0xa5u8; PAYLOAD];
    let mut group = c.benchmark_group("vsock");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    let mut since_credit = 0u32;
    group.bench_function("rx_host_to_guest_4k", |b| {
        b.iter(|| {
            g.host.write_all(&data).unwrap();
            g.pump();
            let mut got = 0;
            let mut idle = 0;
            while got < PAYLOAD {
                let Some((len, h)) = g.recv() else {
                    idle += 1;
                    assert!(idle < 1000, "host data never reached the guest");
                    g.kick(0);
                    continue;
                };
                if h.op == op::RW {
                    got += len as usize;
                }
            }
            g.fwd_cnt = g.fwd_cnt.wrapping_add(got as u32);
            since_credit += got as u32;
            // Like Linux: tell the host about freed space now and then.
            if since_credit >= GUEST_BUF / 4 {
                g.send(op::CREDIT_UPDATE, 0, &[]);
                since_credit = 0;
            }
            black_box(got)
        })
    });
    group.finish();
}

criterion_group!(benches, guest_to_host, host_to_guest);
criterion_main!(benches);
