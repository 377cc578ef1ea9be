//! A net device driven by a simulated guest driver, for unit tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::device::{Net, RXQ, TXQ};
use crate::devices::virtio::net::rx::{Delivery, RxChains};
use crate::devices::virtio::net::{ChainError, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::{activate_without, guest_memory, Desc, GuestQueue};

pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

pub const MAC: [u8; 6] = [0x02, 0xb4, 0x00, 0x00, 0x00, 0x01];
/// Where rx buffers and tx frames are laid out.
const BUFFERS: u64 = 0x10_0000;
/// The driver's queue size (the device allows up to 256).
pub const QUEUE_LEN: u16 = 32;
/// An Ethernet type for experiments (IEEE 802 local), so test frames are
/// told apart from anything else on the link.
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A driver with an rx and a tx queue, the device behind a real
/// transport, and the event loop that serves it.
pub struct Rig {
    pub mem: GuestMemoryMmap,
    pub dev: Arc<Mutex<Net>>,
    pub transport: MmioTransport,
    pub rxq: GuestQueue,
    pub txq: GuestQueue,
    pub em: Manager,
    /// Where each posted single-buffer chain lives, by head.
    rx_bufs: HashMap<u32, u64>,
    next_buf: u64,
}

impl Rig {
    /// Drives `net` through a driver's setup, accepting every feature.
    pub fn new(net: Net) -> Self {
        Self::declining(net, 0)
    }

    /// Same, declining the features in `declined`.
    pub fn declining(net: Net, declined: u64) -> Self {
        let mem = guest_memory();
        let dev = Arc::new(Mutex::new(net));
        let mut transport = MmioTransport::new(mem.clone(), dev.clone());
        let mut em = Manager::new().unwrap();
        em.add_subscriber(dev.clone());
        let rxq = GuestQueue::new(GuestAddress(0x1000), QUEUE_LEN);
        let txq = GuestQueue::new(GuestAddress(0x8000), QUEUE_LEN);
        activate_without(&mut transport, &[&rxq, &txq], declined);
        // The activation event: the queues (and TAP) are watched.
        assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
        Self::with_parts(mem, dev, transport, rxq, txq, em)
    }

    pub fn with_parts(
        mem: GuestMemoryMmap,
        dev: Arc<Mutex<Net>>,
        transport: MmioTransport,
        rxq: GuestQueue,
        txq: GuestQueue,
        em: Manager,
    ) -> Self {
        Self {
            mem,
            dev,
            transport,
            rxq,
            txq,
            em,
            rx_bufs: HashMap::new(),
            next_buf: BUFFERS,
        }
    }

    /// The rest of the rig after its device was rebuilt (a restore): the
    /// buffers it posted stay known.
    pub fn rebuilt(self, mem: GuestMemoryMmap, dev: Arc<Mutex<Net>>, t: MmioTransport) -> Self {
        let mut em = Manager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self {
            mem,
            dev,
            transport: t,
            em,
            ..self
        }
    }

    /// Guest memory for `len` bytes nothing else uses.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        addr
    }

    /// Posts `count` rx buffers of `size` bytes, one descriptor each.
    pub fn post_rx(&mut self, count: usize, size: u32) {
        for _ in 0..count {
            let addr = self.alloc(size);
            let head = self.rxq.add_chain(&self.mem, &[Desc::w(addr, size)]);
            self.rx_bufs.insert(u32::from(head), addr);
        }
    }

    /// Writes `bytes` to fresh guest memory; a readable descriptor of them.
    pub fn readable(&mut self, bytes: &[u8]) -> Desc {
        let addr = self.alloc(bytes.len() as u32);
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        Desc::r(addr, bytes.len() as u32)
    }

    /// Signals queue `index` and serves the event.
    pub fn kick(&mut self, index: usize) {
        self.dev.lock().unwrap().core.queue_events[index]
            .write(1)
            .unwrap();
        assert!(self.run(1000) >= 1, "queue {index} kick not served");
    }

    /// One turn of the event loop; the events it served.
    pub fn run(&mut self, timeout_ms: i32) -> usize {
        self.em.run_with_timeout(timeout_ms).unwrap()
    }

    /// Puts `descs` on the tx queue as one chain and kicks it; the used
    /// length the device returned.
    pub fn send(&mut self, descs: &[Desc]) -> u32 {
        let head = self.txq.add_chain(&self.mem, descs);
        self.kick(TXQ);
        let (id, len) = self.txq.next_used(&self.mem).expect("tx chain not used");
        assert_eq!(id, u32::from(head));
        len
    }

    /// Frames the device put in the rx used ring since the last call,
    /// header included, joined from their buffers by `num_buffers`.
    pub fn received(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some((head, len)) = self.rxq.next_used(&self.mem) {
            let mut frame = self.read_rx(head, len);
            let n = u16::from_le_bytes([frame[10], frame[11]]);
            for _ in 1..n {
                let (head, len) = self.rxq.next_used(&self.mem).expect("frame cut short");
                frame.extend(self.read_rx(head, len));
            }
            frames.push(frame);
        }
        frames
    }

    /// Received frames of this test (by Ethernet type), header stripped.
    pub fn received_test_frames(&mut self) -> Vec<Vec<u8>> {
        self.received()
            .into_iter()
            .filter(|f| f.len() >= VNET_HDR_LEN + 14 && f[VNET_HDR_LEN + 12..][..2] == ETHERTYPE)
            .map(|f| f[VNET_HDR_LEN..].to_vec())
            .collect()
    }

    fn read_rx(&self, head: u32, len: u32) -> Vec<u8> {
        let addr = self.rx_bufs[&head];
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// Runs the descriptor logic of the receive path on `frame` directly.
    pub fn deliver(
        &mut self,
        frame: &mut [u8],
        mergeable: bool,
    ) -> (Result<Delivery, virtio_queue::Error>, Vec<ChainError>) {
        let mut dev = self.dev.lock().unwrap();
        let mem = dev.core.mem.clone().unwrap();
        let mut bad = Vec::new();
        let got = RxChains::default().deliver(
            &mut dev.core.queues[RXQ],
            &mem,
            frame,
            mergeable,
            &mut |_, e| bad.push(e),
        );
        (got, bad)
    }

    pub fn config(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        self.dev.lock().unwrap().read_config(0, &mut b);
        b
    }
}

/// An Ethernet frame of this test: broadcast, `len` bytes in all, its
/// payload a pattern seeded by `tag`.
pub fn test_frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x99]);
    f.extend(ETHERTYPE);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(31) ^ tag));
    f
}

/// `frame` behind a virtio-net header that asks for nothing.
pub fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v.extend_from_slice(frame);
    v
}
