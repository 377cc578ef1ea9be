//! The vsock device driven end to end: a guest driver simulated on real
//! queues in guest memory, the real event loop, and real Unix sockets.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

use super::connection::CONN_BUF_SIZE;
use super::device::{Vsock, VsockError, VSOCK_QUEUE_SIZE};
use super::packet::{op, shutdown, TxHeader, HEADER_LEN, HOST_CID, TYPE_STREAM};
use crate::devices::bus::BusDevice;
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::RestoreError;
use crate::devices::virtio::test_utils::{
    activate, copy_memory, guest_memory, round_trip, Desc, GuestQueue,
};

const CID: u32 = 3;
const GUEST_PORT: u32 = 5000;
const RX_BUF: u32 = 4096;

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A received packet: its header and payload.
#[derive(Debug)]
struct Pkt {
    h: TxHeader,
    data: Vec<u8>,
}

struct Guest {
    dir: TempDir,
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    transport: MmioTransport,
    em: Manager,
    rxq: GuestQueue,
    txq: GuestQueue,
    evq: GuestQueue,
    /// rx chain head -> (header address, data address)
    rx_bufs: HashMap<u32, (u64, u64)>,
    next_buf: u64,
}

impl Guest {
    fn new() -> Self {
        let mut g = Self::without_driver();
        g.start_driver();
        g
    }

    /// The device is up on the host side but no guest driver has run yet.
    fn without_driver() -> Self {
        let dir = TempDir::new().unwrap();
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(
            Vsock::new(CID, dir.as_path().join("v.sock")).unwrap(),
        ));
        let transport = MmioTransport::new(mem.clone(), dev.clone());
        let mut em = Manager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self {
            dir,
            mem,
            dev,
            transport,
            em,
            rxq: GuestQueue::new(GuestAddress(0x1_0000), VSOCK_QUEUE_SIZE),
            txq: GuestQueue::new(GuestAddress(0x2_0000), VSOCK_QUEUE_SIZE),
            evq: GuestQueue::new(GuestAddress(0x3_0000), VSOCK_QUEUE_SIZE),
            rx_bufs: HashMap::new(),
            next_buf: 0x10_0000,
        }
    }

    /// Probes the device like Linux: reset, negotiate, set up the queues.
    fn start_driver(&mut self) {
        self.evq = GuestQueue::new(GuestAddress(0x3_0000), VSOCK_QUEUE_SIZE);
        self.transport.write(0x70, &0u32.to_le_bytes());
        activate(&mut self.transport, &[&self.rxq, &self.txq, &self.evq]);
        self.pump();
    }

    fn path(&self, suffix: &str) -> PathBuf {
        self.dir.as_path().join(format!("v.sock{suffix}"))
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len + 0xfff) & !0xfff;
        assert!(self.next_buf < 16 << 20, "test ran out of guest memory");
        at
    }

    /// Runs the event loop until it goes idle; fails if it never does, which
    /// is what a busy loop would look like.
    fn pump(&mut self) -> usize {
        let mut total = 0;
        for _ in 0..200 {
            let n = self.em.run_with_timeout(5).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
        panic!("event loop never went idle");
    }

    fn add_rx_buffers(&mut self, n: usize) {
        for _ in 0..n {
            let hdr = self.alloc(HEADER_LEN as u64);
            let data = self.alloc(u64::from(RX_BUF));
            let head = self.rxq.add_chain(
                &self.mem,
                &[Desc::w(hdr, HEADER_LEN), Desc::w(data, RX_BUF)],
            );
            self.rx_bufs.insert(u32::from(head), (hdr, data));
        }
        self.kick(0);
    }

    /// Posts one event buffer, as Linux keeps the event queue filled, and
    /// returns its head and address.
    fn post_event_buffer(&mut self) -> (u32, u64) {
        let at = self.alloc(4);
        self.mem.write_obj(u32::MAX, GuestAddress(at)).unwrap();
        let head = self.evq.add_chain(&self.mem, &[Desc::w(at, 4)]);
        self.kick(2);
        (u32::from(head), at)
    }

    /// Saves the device and transport through JSON and restores them on a
    /// copy of guest memory, listening on the same path, with guest CID `cid`.
    fn snapshot_and_restore(&mut self, cid: u32) {
        let mut state = round_trip(&self.dev.lock().unwrap().save());
        state.cid = cid;
        let regs = round_trip(&self.transport.save());
        let mem = copy_memory(&self.mem);
        let dev = Arc::new(Mutex::new(
            Vsock::restore(&state, self.path(""), &mem).unwrap(),
        ));
        self.transport = MmioTransport::restore(mem.clone(), dev.clone(), &regs).unwrap();
        self.em = Manager::new().unwrap();
        self.em.add_subscriber(dev.clone());
        // The old device and its host connections go away here.
        self.dev = dev;
        self.mem = mem;
        self.pump();
    }

    fn interrupt_status(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(0x60, &mut b);
        u32::from_le_bytes(b)
    }

    fn ack_interrupts(&mut self) {
        self.transport.write(0x64, &3u32.to_le_bytes());
    }

    fn kick(&mut self, queue: usize) {
        self.dev.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
        self.pump();
    }

    fn send(
        &mut self,
        op_: u16,
        dst_port: u32,
        flags: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
        data: &[u8],
    ) {
        let h = TxHeader {
            src_cid: u64::from(CID),
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port,
            len: data.len() as u32,
            type_: TYPE_STREAM,
            op: op_,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        self.send_raw(&h, data);
    }

    fn send_raw(&mut self, h: &TxHeader, data: &[u8]) {
        let hdr = self.alloc(HEADER_LEN as u64);
        write_header(&self.mem, hdr, h);
        let mut chain = vec![Desc::r(hdr, HEADER_LEN)];
        if !data.is_empty() {
            let at = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(at)).unwrap();
            chain.push(Desc::r(at, data.len() as u32));
        }
        self.txq.add_chain(&self.mem, &chain);
        self.kick(1);
    }

    fn recv(&mut self) -> Option<Pkt> {
        let (head, len) = self.rxq.next_used(&self.mem)?;
        let (hdr, data) = self.rx_bufs.remove(&head).expect("unknown rx buffer");
        assert!(len >= HEADER_LEN, "short rx packet");
        let h = read_header(&self.mem, hdr);
        assert_eq!(len, HEADER_LEN + h.len);
        let mut payload = vec![0u8; h.len as usize];
        self.mem
            .read_slice(&mut payload, GuestAddress(data))
            .unwrap();
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, u64::from(CID), TYPE_STREAM)
        );
        Some(Pkt { h, data: payload })
    }

    fn expect(&mut self, op_: u16) -> Pkt {
        let p = self
            .recv()
            .unwrap_or_else(|| panic!("no packet, expected op {op_}"));
        assert_eq!(p.h.op, op_, "{p:?}");
        p
    }

    /// A guest-initiated connection to host port `port`, accepted by `listener`.
    fn connect_from_guest(
        &mut self,
        listener: &UnixListener,
        port: u32,
        buf_alloc: u32,
    ) -> UnixStream {
        self.send(op::REQUEST, port, 0, buf_alloc, 0, &[]);
        let p = self.expect(op::RESPONSE);
        assert_eq!((p.h.src_port, p.h.dst_port), (port, GUEST_PORT));
        assert_eq!(p.h.buf_alloc, CONN_BUF_SIZE);
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }
}

fn write_header(mem: &GuestMemoryMmap, at: u64, h: &TxHeader) {
    let mut b = [0u8; 44];
    b[0..8].copy_from_slice(&h.src_cid.to_le_bytes());
    b[8..16].copy_from_slice(&h.dst_cid.to_le_bytes());
    b[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    b[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    b[24..28].copy_from_slice(&h.len.to_le_bytes());
    b[28..30].copy_from_slice(&h.type_.to_le_bytes());
    b[30..32].copy_from_slice(&h.op.to_le_bytes());
    b[32..36].copy_from_slice(&h.flags.to_le_bytes());
    b[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
    b[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
    mem.write_slice(&b, GuestAddress(at)).unwrap();
}

fn read_header(mem: &GuestMemoryMmap, at: u64) -> TxHeader {
    let mut b = [0u8; 44];
    mem.read_slice(&mut b, GuestAddress(at)).unwrap();
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    TxHeader {
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

/// Reads until `n` bytes arrived or the stream would block for too long.
fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    stream.read_exact(&mut out).unwrap();
    out
}

#[test]
fn config_space_holds_the_cid() {
    let g = Guest::new();
    let mut b = [0u8; 8];
    g.dev.lock().unwrap().read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), u64::from(CID));
}

#[test]
fn guest_connects_and_bytes_flow_both_ways() {
    let mut g = Guest::new();
    g.add_rx_buffers(8);
    let listener = UnixListener::bind(g.path("_1234")).unwrap();
    let mut host = g.connect_from_guest(&listener, 1234, 65536);

    g.send(op::RW, 1234, 0, 65536, 0, b"ping");
    assert_eq!(read_n(&mut host, 4), b"ping");

    host.write_all(b"pong").unwrap();
    g.pump();
    let p = g.expect(op::RW);
    assert_eq!(p.data, b"pong");
    assert_eq!((p.h.src_port, p.h.dst_port), (1234, GUEST_PORT));
    // The header reports what we forwarded so far.
    assert_eq!(p.h.fwd_cnt, 4);
    assert!(g.recv().is_none());
    assert_eq!(g.dev.lock().unwrap().connection_count(), 1);
}

#[test]
fn guest_connect_to_nothing_gets_rst() {
    let mut g = Guest::new();
    g.add_rx_buffers(4);
    g.send(op::REQUEST, 4321, 0, 65536, 0, &[]);
    let p = g.expect(op::RST);
    assert_eq!((p.h.src_port, p.h.dst_port), (4321, GUEST_PORT));
    // Packets for unknown connections are answered with RST too, but RST is not.
    g.send(op::RW, 4321, 0, 65536, 0, b"x");
    g.expect(op::RST);
    g.send(op::RST, 4321, 0, 0, 0, &[]);
    assert!(g.recv().is_none());
}

#[test]
fn host_connects_with_connect_line() {
    let mut g = Guest::new();
    g.add_rx_buffers(8);
    let mut host = UnixStream::connect(g.path("")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    g.pump();
    let req = g.expect(op::REQUEST);
    assert_eq!(req.h.dst_port, 52);
    let host_port = req.h.src_port;
    assert!(host_port >= 1 << 30);

    // The guest accepts: it answers from its port 52.
    let resp = TxHeader {
        src_cid: u64::from(CID),
        dst_cid: HOST_CID,
        src_port: 52,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op: op::RESPONSE,
        buf_alloc: 65536,
        ..Default::default()
    };
    g.send_raw(&resp, &[]);
    let line = format!("OK {host_port}\n");
    assert_eq!(read_n(&mut host, line.len()), line.as_bytes());

    host.write_all(b"hello guest").unwrap();
    g.pump();
    let p = g.expect(op::RW);
    assert_eq!(p.data, b"hello guest");
    assert_eq!(p.h.dst_port, 52);

    let rw = TxHeader {
        op: op::RW,
        len: 5,
        ..resp
    };
    g.send_raw(&rw, b"hi ho");
    assert_eq!(read_n(&mut host, 5), b"hi ho");
}

#[test]
fn host_connect_refused_by_guest_closes_stream() {
    let mut g = Guest::new();
    g.add_rx_buffers(4);
    let mut host = UnixStream::connect(g.path("")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 99\n").unwrap();
    g.pump();
    let req = g.expect(op::REQUEST);
    let rst = TxHeader {
        src_cid: u64::from(CID),
        dst_cid: HOST_CID,
        src_port: 99,
        dst_port: req.h.src_port,
        type_: TYPE_STREAM,
        op: op::RST,
        ..Default::default()
    };
    g.send_raw(&rst, &[]);
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert!(g.recv().is_none());

    // A garbage line also just closes the stream.
    let mut host = UnixStream::connect(g.path("")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"HELLO\n").unwrap();
    g.pump();
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert!(g.recv().is_none());
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let mut g = Guest::new();
    g.add_rx_buffers(8);
    let listener = UnixListener::bind(g.path("_7")).unwrap();
    let mut host = g.connect_from_guest(&listener, 7, 16);
    host.write_all(&[0xaa; 100]).unwrap();
    g.pump();
    let p = g.expect(op::RW);
    assert_eq!(p.data.len(), 16);
    g.expect(op::CREDIT_REQUEST);
    assert!(g.recv().is_none());

    // The guest consumed 10 bytes: exactly 10 more may come.
    g.send(op::CREDIT_UPDATE, 7, 0, 16, 10, &[]);
    let p = g.expect(op::RW);
    assert_eq!(p.data.len(), 10);
    g.expect(op::CREDIT_REQUEST);
    assert!(g.recv().is_none());

    // A bigger buffer releases the rest.
    g.send(op::CREDIT_UPDATE, 7, 0, 4096, 26, &[]);
    let p = g.expect(op::RW);
    assert_eq!(p.data.len(), 74);
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mut g = Guest::new();
    g.add_rx_buffers(4);
    let listener = UnixListener::bind(g.path("_8")).unwrap();
    let mut host = g.connect_from_guest(&listener, 8, 4096);
    // Nobody reads on the host side: the socket fills, then our buffer does,
    // and a guest that ignores our credit is cut off.
    let chunk = vec![0x55u8; 60 * 1024];
    let mut sent = 0usize;
    let mut saw_rst = false;
    while !saw_rst {
        assert!(sent < 8 << 20, "credit was never enforced");
        if g.next_buf > 12 << 20 {
            g.next_buf = 0x10_0000;
        }
        g.send(op::RW, 8, 0, 4096, 0, &chunk);
        sent += chunk.len();
        while let Some(p) = g.recv() {
            match p.h.op {
                op::RST => saw_rst = true,
                op::CREDIT_UPDATE => {}
                other => panic!("unexpected op {other}"),
            }
            g.add_rx_buffers(1);
        }
    }
    assert!(sent > CONN_BUF_SIZE as usize);
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    // What the socket had already taken is still delivered, then EOF.
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert!(!got.is_empty() && got.len() < sent);
}

#[test]
fn shutdown_half_closes_each_way() {
    let mut g = Guest::new();
    g.add_rx_buffers(8);
    let listener = UnixListener::bind(g.path("_9")).unwrap();
    let mut host = g.connect_from_guest(&listener, 9, 65536);

    // Guest is done sending: host reads EOF but can still answer.
    g.send(op::SHUTDOWN, 9, shutdown::SEND, 65536, 0, &[]);
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    host.write_all(b"late").unwrap();
    g.pump();
    assert_eq!(g.expect(op::RW).data, b"late");

    // Host is done too: the guest is told, then the connection is reset.
    host.shutdown(Shutdown::Write).unwrap();
    g.pump();
    let p = g.expect(op::SHUTDOWN);
    assert_eq!(p.h.flags, shutdown::SEND);
    g.expect(op::RST);
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
}

#[test]
fn full_shutdown_from_guest_closes_host_stream() {
    let mut g = Guest::new();
    g.add_rx_buffers(4);
    let listener = UnixListener::bind(g.path("_10")).unwrap();
    let mut host = g.connect_from_guest(&listener, 10, 65536);
    g.send(op::RW, 10, 0, 65536, 0, b"last words");
    g.send(op::SHUTDOWN, 10, shutdown::BOTH, 65536, 0, &[]);
    g.expect(op::RST);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
}

#[test]
fn host_data_waits_for_rx_buffers_without_spinning() {
    let mut g = Guest::new();
    g.add_rx_buffers(1);
    let listener = UnixListener::bind(g.path("_11")).unwrap();
    // The only rx buffer carries the RESPONSE.
    let mut host = g.connect_from_guest(&listener, 11, 65536);
    host.write_all(b"queued").unwrap();
    // pump() panics if the loop keeps finding work.
    let events = g.pump();
    assert!(
        events <= 2,
        "{events} events while the guest had no buffers"
    );
    assert!(g.recv().is_none());
    g.add_rx_buffers(1);
    assert_eq!(g.expect(op::RW).data, b"queued");
}

#[test]
fn many_connections_are_kept_apart() {
    let mut g = Guest::new();
    g.add_rx_buffers(64);
    let listener = UnixListener::bind(g.path("_12")).unwrap();
    let mut hosts = Vec::new();
    for guest_port in 6000..6010u32 {
        let h = TxHeader {
            src_cid: u64::from(CID),
            dst_cid: HOST_CID,
            src_port: guest_port,
            dst_port: 12,
            type_: TYPE_STREAM,
            op: op::REQUEST,
            buf_alloc: 65536,
            ..Default::default()
        };
        g.send_raw(&h, &[]);
        assert_eq!(g.expect(op::RESPONSE).h.dst_port, guest_port);
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        hosts.push((guest_port, s));
    }
    for (port, s) in &mut hosts {
        s.write_all(format!("to {port}").as_bytes()).unwrap();
    }
    g.pump();
    let mut seen = 0;
    while let Some(p) = g.recv() {
        assert_eq!(p.h.op, op::RW);
        assert_eq!(p.data, format!("to {}", p.h.dst_port).as_bytes());
        seen += 1;
    }
    assert_eq!(seen, 10);
    assert_eq!(g.dev.lock().unwrap().connection_count(), 10);
}

#[test]
fn malformed_tx_packets_are_dropped() {
    let mut g = Guest::new();
    g.add_rx_buffers(4);
    // Header descriptor too short.
    let at = g.alloc(64);
    g.txq.add_chain(&g.mem, &[Desc::r(at, 10)]);
    // Header descriptor device-writable.
    g.txq.add_chain(&g.mem, &[Desc::w(at, HEADER_LEN)]);
    // Header outside guest memory.
    g.txq
        .add_chain(&g.mem, &[Desc::r(0x10_0000_0000, HEADER_LEN)]);
    // Payload length beyond what the chain holds.
    let h = TxHeader {
        src_cid: u64::from(CID),
        dst_cid: HOST_CID,
        type_: TYPE_STREAM,
        op: op::RW,
        len: 1000,
        ..Default::default()
    };
    write_header(&g.mem, at, &h);
    g.txq
        .add_chain(&g.mem, &[Desc::r(at, HEADER_LEN), Desc::r(at + 0x1000, 10)]);
    // Wrong source CID.
    write_header(
        &g.mem,
        at + 0x100,
        &TxHeader {
            src_cid: 7,
            len: 0,
            op: op::REQUEST,
            ..h
        },
    );
    g.txq.add_chain(&g.mem, &[Desc::r(at + 0x100, HEADER_LEN)]);
    g.kick(1);
    assert_eq!(g.txq.used_idx(&g.mem), 5);
    assert!(g.recv().is_none());

    // Still working.
    g.send(op::REQUEST, 1, 0, 4096, 0, &[]);
    g.expect(op::RST);
}

#[test]
fn driver_reset_drops_connections() {
    let mut g = Guest::new();
    g.add_rx_buffers(4);
    let listener = UnixListener::bind(g.path("_13")).unwrap();
    let mut host = g.connect_from_guest(&listener, 13, 65536);
    g.transport.write(0x70, &0u32.to_le_bytes());
    g.pump();
    let mut b = [0u8; 4];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    assert!(!g.dev.lock().unwrap().is_activated());
}

#[test]
fn socket_file_lifecycle() {
    let dir = TempDir::new().unwrap();
    let path = dir.as_path().join("s.sock");
    // A stale socket from a previous run is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dev = Vsock::new(CID, &path).unwrap();
    UnixStream::connect(&path).unwrap();
    drop(dev);
    assert!(!path.exists());

    // A regular file is never deleted.
    std::fs::write(&path, b"data").unwrap();
    assert!(matches!(
        Vsock::new(CID, &path),
        Err(VsockError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), b"data");

    assert!(matches!(
        Vsock::new(2, dir.as_path().join("x")),
        Err(VsockError::InvalidCid(2))
    ));
    let err = Vsock::new(CID, "/nonexistent/dir/v.sock").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir/v.sock"), "{err}");
}

#[test]
fn bulk_transfer_both_ways() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.path("_14")).unwrap();
    g.add_rx_buffers(16);
    let mut host = g.connect_from_guest(&listener, 14, 64 * 1024);
    host.set_nonblocking(true).unwrap();

    // Host -> guest, 1 MiB, with the guest returning credit as it consumes.
    let payload: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut written = 0;
    let mut received = Vec::new();
    let start = Instant::now();
    while received.len() < payload.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "transfer stalled"
        );
        if written < payload.len() {
            match host.write(&payload[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        g.pump();
        let mut got_any = false;
        while let Some(p) = g.recv() {
            got_any = true;
            if p.h.op == op::RW {
                received.extend_from_slice(&p.data);
            }
        }
        if got_any {
            g.add_rx_buffers(16);
            g.send(
                op::CREDIT_UPDATE,
                14,
                0,
                64 * 1024,
                received.len() as u32,
                &[],
            );
        }
    }
    assert!(received == payload, "host->guest data corrupted");
}

#[test]
fn bulk_guest_to_host_within_credit() {
    let mut g = Guest::new();
    let listener = UnixListener::bind(g.path("_15")).unwrap();
    g.add_rx_buffers(16);
    let mut host = g.connect_from_guest(&listener, 15, 64 * 1024);
    host.set_nonblocking(true).unwrap();

    let payload: Vec<u8> = (0..2 << 20).map(|i| (i * 13 % 253) as u8).collect();
    let (mut sent, mut peer_fwd_cnt, mut peer_buf_alloc) = (0usize, 0u32, CONN_BUF_SIZE);
    let mut received = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    let start = Instant::now();
    while received.len() < payload.len() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "transfer stalled"
        );
        // Send only what the device's advertised credit allows.
        let in_flight = sent as u32 - peer_fwd_cnt;
        let credit = (peer_buf_alloc - in_flight) as usize;
        let n = credit.min(16 * 1024).min(payload.len() - sent);
        if n > 0 {
            if g.next_buf > 12 << 20 {
                g.next_buf = 0x10_0000;
            }
            g.send(op::RW, 15, 0, 64 * 1024, 0, &payload[sent..sent + n]);
            sent += n;
        }
        loop {
            match host.read(&mut buf) {
                Ok(0) => panic!("host stream closed"),
                Ok(k) => received.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        g.pump();
        let mut consumed = 0;
        while let Some(p) = g.recv() {
            assert_eq!(p.h.op, op::CREDIT_UPDATE);
            peer_fwd_cnt = p.h.fwd_cnt;
            peer_buf_alloc = p.h.buf_alloc;
            consumed += 1;
        }
        if consumed > 0 {
            g.add_rx_buffers(consumed);
        }
    }
    assert!(received == payload, "guest->host data corrupted");
}

#[test]
fn host_connect_before_the_driver_is_delivered_once_it_runs() {
    let mut g = Guest::without_driver();
    let mut host = UnixStream::connect(g.path("")).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    g.pump();
    g.start_driver();
    g.add_rx_buffers(2);
    assert_eq!(g.expect(op::REQUEST).h.dst_port, 1024);
}

#[test]
fn restore_sends_transport_reset_and_drops_host_connections() {
    let mut g = Guest::new();
    g.add_rx_buffers(8);
    let listener = UnixListener::bind(g.path("_1234")).unwrap();
    let mut host = g.connect_from_guest(&listener, 1234, 65536);
    let (head, at) = g.post_event_buffer();
    g.ack_interrupts();

    g.snapshot_and_restore(CID);

    // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET in the pre-posted buffer.
    assert_eq!(g.evq.next_used(&g.mem), Some((head, 4)));
    let id: u32 = g.mem.read_obj(GuestAddress(at)).unwrap();
    assert_eq!(id, 0);
    assert_eq!(g.interrupt_status() & 1, 1);
    // The host end of the old connection sees EOF; the muxer starts empty.
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0);
    assert_eq!(g.dev.lock().unwrap().connection_count(), 0);
    // Sent once only.
    g.post_event_buffer();
    assert!(g.evq.next_used(&g.mem).is_none());
    // The guest reconnects through the new muxer, on the saved rx/tx rings.
    let mut host = g.connect_from_guest(&listener, 1234, 65536);
    g.send(op::RW, 1234, 0, 65536, 0, b"again");
    assert_eq!(read_n(&mut host, 5), b"again");
}

/// The guest resets every connection it has when it handles the reset,
/// which it does in a workqueue that can run late: a host connection made
/// in between must not reach it before then, or it would be reset too.
#[test]
fn host_connections_after_restore_wait_until_the_guest_handled_the_reset() {
    let mut g = Guest::new();
    g.add_rx_buffers(8);
    g.post_event_buffer();
    g.post_event_buffer();
    g.ack_interrupts();
    g.snapshot_and_restore(CID);
    assert!(g.evq.next_used(&g.mem).is_some(), "no transport reset");

    let mut host = UnixStream::connect(g.path("")).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    g.pump();
    assert!(
        g.recv().is_none(),
        "connection reached the guest before the reset was handled"
    );

    // Handling the event, the guest re-posts its buffer and kicks.
    g.post_event_buffer();
    assert_eq!(g.expect(op::REQUEST).h.dst_port, 1024);
}

#[test]
fn restore_with_new_cid_waits_for_an_event_buffer() {
    let mut g = Guest::new();
    g.snapshot_and_restore(CID + 4);
    let mut b = [0u8; 8];
    g.dev.lock().unwrap().read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), u64::from(CID + 4));
    assert_eq!(g.dev.lock().unwrap().cid(), CID + 4);
    // No event buffer yet: the reset waits for the guest to post one.
    assert!(g.evq.next_used(&g.mem).is_none());
    let (head, at) = g.post_event_buffer();
    assert_eq!(g.evq.next_used(&g.mem), Some((head, 4)));
    assert_eq!(g.mem.read_obj::<u32>(GuestAddress(at)).unwrap(), 0);
}

#[test]
fn too_small_event_buffer_is_returned_empty() {
    let mut g = Guest::new();
    g.snapshot_and_restore(CID);
    let small = g.alloc(2);
    let first = g.evq.add_chain(&g.mem, &[Desc::w(small, 2)]);
    let (second, _) = g.post_event_buffer();
    assert_eq!(g.evq.next_used(&g.mem), Some((u32::from(first), 0)));
    assert_eq!(g.evq.next_used(&g.mem), Some((second, 4)));
}

#[test]
fn inactive_device_restores_without_reset() {
    let mut g = Guest::without_driver();
    let state = round_trip(&g.dev.lock().unwrap().save());
    assert!(!state.core.activated);
    let restored = Vsock::restore(&state, g.dir.as_path().join("r.sock"), &g.mem).unwrap();
    assert!(!restored.reset_pending);
    assert!(!restored.is_activated());
    g.pump();
}

#[test]
fn bad_vsock_state_is_an_error() {
    let g = Guest::new();
    let state = g.dev.lock().unwrap().save();
    let path = g.dir.as_path().join("r.sock");

    let mut bad = state.clone();
    bad.cid = 2;
    let err = Vsock::restore(&bad, &path, &g.mem).unwrap_err();
    assert!(
        matches!(err, RestoreError::Vsock(VsockError::InvalidCid(2))),
        "{err}"
    );

    let mut bad = state.clone();
    bad.core.queues.pop();
    let err = Vsock::restore(&bad, &path, &g.mem).unwrap_err();
    assert!(err.to_string().starts_with("virtio-vsock:"), "{err}");

    let mut bad = state;
    bad.core.queues[2].used_ring = 0xffff_ffff_0000;
    let err = Vsock::restore(&bad, &path, &g.mem).unwrap_err();
    assert!(
        matches!(err, RestoreError::QueueOutsideMemory { index: 2, .. }),
        "{err}"
    );
}
