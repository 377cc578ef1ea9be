//! One `NETLINK_ROUTE` socket: requests with acks, and multipart dumps.

use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::Failure;

/// A dump interrupted by a concurrent change is redone this many times.
const DUMP_TRIES: usize = 5;

pub(crate) struct RouteSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    pub(crate) fn open() -> Result<RouteSocket, io::Error> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry only the request's header, not the whole request back.
        let _ = socket.set_cap_ack(true);
        Ok(RouteSocket {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `msg` with `NLM_F_ACK | flags` and waits for the ack. Any
    /// replies before the ack (a `GET` of one object) are returned.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        let mut replies = Vec::new();
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while off < n {
                let (len, item) = parse(&self.buf[off..n], seq)?;
                off += len;
                match item {
                    Item::Other => {}
                    Item::Message(m, _) => replies.push(m),
                    Item::Ack => return Ok(replies),
                    Item::Error(e) => return Err(Failure::Kernel(e)),
                    Item::Done(_) => return Err(Failure::Protocol("unexpected NLMSG_DONE".into())),
                }
            }
        }
    }

    /// Dumps with `NLM_F_DUMP`: every message until `NLMSG_DONE`. Redone when
    /// the kernel says the dump was interrupted by a change.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        for _ in 0..DUMP_TRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut replies = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                let n = self.recv()?;
                let mut off = 0;
                while off < n {
                    let (len, item) = parse(&self.buf[off..n], seq)?;
                    off += len;
                    match item {
                        Item::Other | Item::Ack => {}
                        Item::Message(m, flags) => {
                            interrupted |= flags & NLM_F_DUMP_INTR != 0;
                            replies.push(m);
                        }
                        Item::Error(e) => return Err(Failure::Kernel(e)),
                        Item::Done(flags) => {
                            interrupted |= flags & NLM_F_DUMP_INTR != 0;
                            break 'recv;
                        }
                    }
                }
            }
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(Failure::Protocol(format!(
            "dump interrupted by concurrent changes {DUMP_TRIES} times"
        )))
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, Failure> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut msg = NetlinkMessage::from(msg);
        msg.header.flags = flags;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        let sent = self.socket.send(&out, 0).map_err(Failure::Io)?;
        if sent != out.len() {
            return Err(Failure::Protocol(format!(
                "short send: {sent} of {} bytes",
                out.len()
            )));
        }
        Ok(self.seq)
    }

    /// One datagram into `self.buf`, grown to fit; returns its length.
    fn recv(&mut self) -> Result<usize, Failure> {
        let fd = self.socket.as_raw_fd();
        loop {
            // SAFETY: `buf` is valid for `len` bytes for the whole call.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::Io(e));
            }
            let n = n as usize;
            if n > self.buf.len() {
                self.buf.resize(n, 0);
            }
            // SAFETY: as above.
            let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::Io(e));
            }
            return Ok(n as usize);
        }
    }
}

enum Item {
    /// Not ours (another sequence number), or a no-op.
    Other,
    Message(RouteNetlinkMessage, u16),
    Ack,
    Error(i32),
    Done(u16),
}

/// Parses the first netlink message of `buf`: returns its aligned length and
/// what it is.
fn parse(buf: &[u8], seq: u32) -> Result<(usize, Item), Failure> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Failure::Protocol(format!("{what}: {e}"));
    let nl = NetlinkBuffer::new_checked(buf).map_err(|e| bad("bad netlink header", &e))?;
    let len = nl.length() as usize;
    let aligned = (len + 3) & !3;
    let total = aligned.min(buf.len());
    if nl.sequence_number() != seq {
        return Ok((total, Item::Other));
    }
    let flags = nl.flags();
    let payload = nl.payload();
    let item = match nl.message_type() {
        NLMSG_NOOP => Item::Other,
        NLMSG_OVERRUN => return Err(Failure::Protocol("netlink overrun".into())),
        NLMSG_ERROR => {
            let code = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| Failure::Protocol("short NLMSG_ERROR".into()))?;
            if code == 0 {
                Item::Ack
            } else {
                Item::Error(code.saturating_abs())
            }
        }
        NLMSG_DONE => {
            // A dump can end with an error in place of a plain DONE.
            let code = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            if code < 0 {
                Item::Error(code.saturating_abs())
            } else {
                Item::Done(flags)
            }
        }
        _ => {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
                .map_err(|e| bad("cannot decode the kernel's answer", &e))?;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => Item::Message(m, flags),
                _ => Item::Other,
            }
        }
    };
    Ok((total, item))
}
