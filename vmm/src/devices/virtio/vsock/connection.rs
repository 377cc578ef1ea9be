//! One guest<->host stream: its handshake, half-close state and credit.
//!
//! Credit (virtio 1.2 section 5.10.6.3): each side advertises `buf_alloc`, its
//! receive buffer, and `fwd_cnt`, how many bytes it has consumed. A sender may
//! have at most `buf_alloc - (sent - fwd_cnt)` bytes in flight. Here the
//! host's receive buffer is [`TxBuf`]: guest bytes the host socket has not
//! taken yet, so a guest that respects our credit can never overflow it.

use std::io::{self, ErrorKind};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use event_manager::EventSet;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::packet::{op, shutdown, RxHeader, TxHeader};
use super::tx_buf::TxBuf;

/// Our receive buffer per connection, advertised as `buf_alloc`.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Tell the guest about consumed bytes once this many have piled up, so a
/// bulk sender is not stalled yet small transfers cost no extra packets.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected; our REQUEST awaits the guest's RESPONSE.
    LocalInit,
    /// Both sides agreed; data may flow.
    Established,
}

/// What the muxer must do with a connection after an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Tell the guest with RST and forget the connection.
    Reset,
    /// Forget the connection without telling the guest (it sent RST).
    Drop,
}

/// Result of asking the connection for a packet for the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    Packet(RxHeader),
    Nothing,
    Reset,
}

/// Control packets owed to the guest.
#[derive(Debug, Default)]
struct Owed {
    request: bool,
    response: bool,
    shutdown: bool,
    credit_request: bool,
    credit_update: bool,
}

impl Owed {
    fn any(&self) -> bool {
        self.request || self.response || self.shutdown || self.credit_request || self.credit_update
    }
}

enum ReadResult {
    Data(u32),
    Eof,
    NoCredit,
    WouldBlock,
    Failed(io::Error),
}

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    local_port: u32,
    peer_port: u32,
    state: ConnState,
    owed: Owed,
    /// The host socket was readable when last polled and not yet drained.
    rw_pending: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes handed to the host socket.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    credit_request_sent: bool,
    tx_buf: TxBuf,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    /// The host closed its sending side.
    host_eof: bool,
    shutdown_sent: bool,
    write_closed: bool,
    /// What the fd is registered for with the event loop, if at all.
    pub(super) registered: Option<EventSet>,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            rw_pending: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            credit_request_sent: false,
            tx_buf: TxBuf::default(),
            peer_shutdown: 0,
            host_eof: false,
            shutdown_sent: false,
            write_closed: false,
            registered: None,
        }
    }

    /// The guest connected and we reached the host listener.
    pub fn peer_init(stream: UnixStream, local_port: u32, request: &TxHeader) -> Self {
        let mut c = Self::new(stream, local_port, request.src_port, ConnState::Established);
        c.update_peer_credit(request);
        c.owed.response = true;
        c
    }

    /// A host program asked for the guest's `peer_port`.
    pub fn local_init(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, ConnState::LocalInit);
        c.owed.request = true;
        c
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    fn update_peer_credit(&mut self, h: &TxHeader) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & shutdown::RCV == 0
    }

    /// Whether the connection has something for the guest's rx queue.
    pub fn has_pending_rx(&self) -> bool {
        self.owed.any() || (self.rw_pending && self.can_read())
    }

    /// Both directions are closed and everything the guest sent was delivered.
    pub fn finished(&self) -> bool {
        if !self.tx_buf.is_empty() {
            return false;
        }
        let guest_done_sending = self.peer_shutdown & shutdown::SEND != 0;
        self.peer_shutdown == shutdown::BOTH
            || (guest_done_sending && self.host_eof && self.shutdown_sent)
    }

    /// The epoll events worth waking up for. Empty means "do not watch": a
    /// socket must not stay registered when we would not act on it, or a
    /// hang-up (always reported) would spin the loop.
    pub fn wanted_events(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.can_read()
            && !self.rw_pending
            && (self.peer_credit() > 0 || !self.credit_request_sent)
        {
            events |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            events |= EventSet::OUT;
        }
        events
    }

    /// Handles a packet the guest sent on this connection.
    pub fn send_pkt(&mut self, h: &TxHeader, data: Option<&VolatileSlice<'_, ()>>) -> Verdict {
        if h.op == op::RST {
            return Verdict::Drop;
        }
        self.update_peer_credit(h);
        match (self.state, h.op) {
            (ConnState::LocalInit, op::RESPONSE) => {
                self.state = ConnState::Established;
                let reply = format!("OK {}\n", self.local_port);
                self.tx_buf.push_uncounted(reply.as_bytes());
                self.flush()
            }
            (ConnState::Established, op::RW) => self.forward(data),
            (ConnState::Established, op::CREDIT_UPDATE) => Verdict::Keep,
            (ConnState::Established, op::CREDIT_REQUEST) => {
                self.owed.credit_update = true;
                Verdict::Keep
            }
            (ConnState::Established, op::SHUTDOWN) => self.peer_shut_down(h.flags),
            (state, other) => {
                log::debug!(
                    "vsock: op {other} in state {state:?} on {}:{}",
                    self.local_port,
                    self.peer_port
                );
                Verdict::Reset
            }
        }
    }

    fn forward(&mut self, data: Option<&VolatileSlice<'_, ()>>) -> Verdict {
        if self.peer_shutdown & shutdown::SEND != 0 {
            log::debug!("vsock: guest sent data after SHUTDOWN(SEND)");
            return Verdict::Reset;
        }
        let Some(data) = data else {
            return Verdict::Keep;
        };
        if self.tx_buf.counted_len() + data.len() > CONN_BUF_SIZE as usize {
            log::warn!(
                "vsock: guest overran its credit on {}:{}",
                self.local_port,
                self.peer_port
            );
            return Verdict::Reset;
        }
        let mut rest = *data;
        if self.tx_buf.is_empty() {
            match self.stream.write_volatile(data) {
                Ok(n) => {
                    self.fwd_cnt += n as u32;
                    rest = match data.offset(n) {
                        Ok(r) => r,
                        // Everything was written.
                        Err(_) => return self.after_forward(),
                    };
                }
                Err(e) if is_would_block(&e) => {}
                Err(e) => {
                    log::debug!("vsock: write to host socket failed: {e}");
                    return Verdict::Reset;
                }
            }
        }
        if !rest.is_empty() {
            self.tx_buf.push_guest(&rest);
        }
        self.after_forward()
    }

    fn after_forward(&mut self) -> Verdict {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
        Verdict::Keep
    }

    /// Writes buffered guest bytes to the host socket.
    fn flush(&mut self) -> Verdict {
        match self.tx_buf.flush_to(&mut self.stream) {
            Ok(n) => self.fwd_cnt += n as u32,
            Err(e) => {
                log::debug!("vsock: write to host socket failed: {e}");
                return Verdict::Reset;
            }
        }
        self.close_write_if_done();
        self.after_forward()
    }

    fn close_write_if_done(&mut self) {
        if self.peer_shutdown & shutdown::SEND != 0 && self.tx_buf.is_empty() && !self.write_closed
        {
            self.write_closed = true;
            // The host reads EOF; failure means it is gone, which the next
            // read or write reports.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    fn peer_shut_down(&mut self, flags: u32) -> Verdict {
        let new = flags & shutdown::BOTH & !self.peer_shutdown;
        self.peer_shutdown |= new;
        if new & shutdown::RCV != 0 {
            self.rw_pending = false;
            // Host writes now fail instead of piling up unread.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        self.close_write_if_done();
        Verdict::Keep
    }

    /// Reacts to epoll readiness of the host socket.
    pub fn notify(&mut self, events: EventSet) -> Verdict {
        if events.contains(EventSet::ERROR) {
            return Verdict::Reset;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP) && self.can_read() {
            self.rw_pending = true;
        }
        let hung_up = events.contains(EventSet::HANG_UP);
        if events.contains(EventSet::OUT) || (hung_up && !self.tx_buf.is_empty()) {
            return self.flush();
        }
        Verdict::Keep
    }

    /// Produces the next packet for the guest; `data` is the payload space
    /// of the guest's rx buffer.
    pub fn recv_pkt(&mut self, data: &VolatileSlice<'_, ()>) -> RxOutcome {
        if self.owed.request {
            self.owed.request = false;
            return RxOutcome::Packet(self.header(op::REQUEST, 0, 0));
        }
        if self.owed.response {
            self.owed.response = false;
            return RxOutcome::Packet(self.header(op::RESPONSE, 0, 0));
        }
        if self.rw_pending && self.can_read() {
            match self.read_data(data) {
                ReadResult::Data(n) => return RxOutcome::Packet(self.header(op::RW, 0, n)),
                ReadResult::Eof => {
                    self.rw_pending = false;
                    self.host_eof = true;
                    self.owed.shutdown = true;
                }
                ReadResult::NoCredit => {
                    self.rw_pending = false;
                    if !self.credit_request_sent {
                        self.credit_request_sent = true;
                        self.owed.credit_request = true;
                    }
                }
                ReadResult::WouldBlock => self.rw_pending = false,
                ReadResult::Failed(e) => {
                    log::debug!("vsock: read from host socket failed: {e}");
                    return RxOutcome::Reset;
                }
            }
        }
        if self.owed.shutdown {
            self.owed.shutdown = false;
            self.shutdown_sent = true;
            return RxOutcome::Packet(self.header(op::SHUTDOWN, shutdown::SEND, 0));
        }
        if self.owed.credit_request {
            self.owed.credit_request = false;
            return RxOutcome::Packet(self.header(op::CREDIT_REQUEST, 0, 0));
        }
        if self.owed.credit_update {
            return RxOutcome::Packet(self.header(op::CREDIT_UPDATE, 0, 0));
        }
        RxOutcome::Nothing
    }

    fn read_data(&mut self, data: &VolatileSlice<'_, ()>) -> ReadResult {
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            return ReadResult::NoCredit;
        }
        // A zero-length read would look like EOF.
        let len = credit.min(data.len());
        let Ok(mut room) = data.subslice(0, len) else {
            return ReadResult::WouldBlock;
        };
        if len == 0 {
            return ReadResult::WouldBlock;
        }
        match self.stream.read_volatile(&mut room) {
            Ok(0) => ReadResult::Eof,
            Ok(n) => {
                self.rx_cnt += n as u32;
                ReadResult::Data(n as u32)
            }
            Err(e) if is_would_block(&e) => ReadResult::WouldBlock,
            Err(VolatileMemoryError::IOError(e)) => ReadResult::Failed(e),
            Err(e) => ReadResult::Failed(io::Error::other(e)),
        }
    }

    /// Every packet carries our credit, so sending one settles a pending update.
    fn header(&mut self, op: u16, flags: u32, len: u32) -> RxHeader {
        self.owed.credit_update = false;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        RxHeader {
            src_port: self.local_port,
            dst_port: self.peer_port,
            op,
            flags,
            len,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }
}

fn is_would_block(e: &VolatileMemoryError) -> bool {
    matches!(e, VolatileMemoryError::IOError(e)
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, guest_slice};

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        let req = TxHeader {
            src_port: 99,
            op: op::REQUEST,
            buf_alloc: 8,
            ..Default::default()
        };
        (Connection::peer_init(ours, 1234, &req), theirs)
    }

    fn tx(op: u16, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> TxHeader {
        TxHeader {
            op,
            flags,
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    #[test]
    fn response_first_then_credit_limited_data() {
        let mem = guest_memory();
        let buf = guest_slice(&mem, 0x1000, 64);
        let (mut c, mut host) = pair();
        host.write_all(b"0123456789abcdef").unwrap();

        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, 1234, 99));
        assert_eq!(h.buf_alloc, CONN_BUF_SIZE);

        assert!(c.wanted_events().contains(EventSet::IN));
        assert_eq!(c.notify(EventSet::IN), Verdict::Keep);
        assert!(c.wanted_events().is_empty());
        // The guest advertised 8 bytes of buffer: only 8 may go out.
        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!((h.op, h.len), (op::RW, 8));
        let mut got = [0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(&got, b"01234567");
        // Out of credit: one CREDIT_REQUEST, then silence.
        assert_eq!(c.peer_credit(), 0);
        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!(h.op, op::CREDIT_REQUEST);
        assert_eq!(c.recv_pkt(&buf), RxOutcome::Nothing);
        assert!(c.wanted_events().is_empty());
        // The guest consumed 4 bytes.
        assert_eq!(
            c.send_pkt(&tx(op::CREDIT_UPDATE, 0, 8, 4), None),
            Verdict::Keep
        );
        assert!(c.wanted_events().contains(EventSet::IN));
        c.notify(EventSet::IN);
        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!((h.op, h.len), (op::RW, 4));
    }

    #[test]
    fn guest_data_reaches_host_and_credit_is_enforced() {
        let mem = guest_memory();
        mem.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let (mut c, mut host) = pair();
        let data = guest_slice(&mem, 0x2000, 5);
        assert_eq!(c.send_pkt(&tx(op::RW, 0, 8, 0), Some(&data)), Verdict::Keep);
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        // More than our whole buffer at once is a credit violation.
        let big = guest_slice(&mem, 0x10_0000, CONN_BUF_SIZE as usize + 1);
        assert_eq!(c.send_pkt(&tx(op::RW, 0, 8, 0), Some(&big)), Verdict::Reset);
    }

    #[test]
    fn blocked_host_socket_buffers_then_drains() {
        let mem = guest_memory();
        let (mut c, mut host) = pair();
        let chunk = guest_slice(&mem, 0x10_0000, 64 * 1024);
        let mut sent = 0usize;
        // Fill the socket until data stays buffered.
        while c.wanted_events() & EventSet::OUT == EventSet::empty() {
            assert_eq!(
                c.send_pkt(&tx(op::RW, 0, 8, 0), Some(&chunk)),
                Verdict::Keep
            );
            sent += chunk.len();
            assert!(sent < 16 << 20, "socket never filled");
        }
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while received < sent {
            match host.read(&mut buf) {
                Ok(n) => received += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert_eq!(c.notify(EventSet::OUT), Verdict::Keep);
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(c.notify(EventSet::OUT), Verdict::Keep);
        assert!(c.wanted_events() & EventSet::OUT == EventSet::empty());
        // Enough was consumed that the guest is owed a credit update.
        let out = guest_slice(&mem, 0x1000, 64);
        let RxOutcome::Packet(h) = c.recv_pkt(&out) else {
            panic!()
        };
        assert_eq!(h.op, op::RESPONSE);
        assert_eq!(h.fwd_cnt as usize, sent);
    }

    #[test]
    fn half_close_both_ways() {
        let mem = guest_memory();
        let buf = guest_slice(&mem, 0x1000, 64);
        let (mut c, mut host) = pair();
        let _ = c.recv_pkt(&buf); // RESPONSE

        // Guest stops sending: the host reads EOF but can still write.
        assert_eq!(
            c.send_pkt(&tx(op::SHUTDOWN, shutdown::SEND, 8, 0), None),
            Verdict::Keep
        );
        let mut b = [0u8; 4];
        assert_eq!(host.read(&mut b).unwrap(), 0);
        assert!(!c.finished());
        host.write_all(b"bye").unwrap();
        c.notify(EventSet::IN);
        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!((h.op, h.len), (op::RW, 3));

        // Host stops sending: the guest gets SHUTDOWN(SEND), then we are done.
        host.shutdown(Shutdown::Write).unwrap();
        c.notify(EventSet::IN);
        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!((h.op, h.flags), (op::SHUTDOWN, shutdown::SEND));
        assert!(c.finished());
    }

    #[test]
    fn data_after_shutdown_and_unexpected_ops_reset() {
        let mem = guest_memory();
        let data = guest_slice(&mem, 0x2000, 4);
        let (mut c, _host) = pair();
        c.send_pkt(&tx(op::SHUTDOWN, shutdown::SEND, 8, 0), None);
        assert_eq!(
            c.send_pkt(&tx(op::RW, 0, 8, 0), Some(&data)),
            Verdict::Reset
        );
        let (mut c, _host) = pair();
        assert_eq!(c.send_pkt(&tx(op::REQUEST, 0, 8, 0), None), Verdict::Reset);
        assert_eq!(c.send_pkt(&tx(op::RST, 0, 8, 0), None), Verdict::Drop);
        assert_eq!(c.send_pkt(&tx(99, 0, 8, 0), None), Verdict::Reset);
    }

    #[test]
    fn local_init_handshake() {
        let mem = guest_memory();
        let buf = guest_slice(&mem, 0x1000, 64);
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::local_init(ours, 1 << 30, 52);
        assert!(c.wanted_events().is_empty());
        let RxOutcome::Packet(h) = c.recv_pkt(&buf) else {
            panic!()
        };
        assert_eq!((h.op, h.src_port, h.dst_port), (op::REQUEST, 1 << 30, 52));
        assert_eq!(c.recv_pkt(&buf), RxOutcome::Nothing);
        assert_eq!(
            c.send_pkt(&tx(op::RESPONSE, 0, 4096, 0), None),
            Verdict::Keep
        );
        assert_eq!(c.state, ConnState::Established);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
        // The reply is not guest data.
        assert_eq!(c.fwd_cnt.0, 0);
    }
}
