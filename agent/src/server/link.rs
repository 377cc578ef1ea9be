//! One host connection's framing: requests decoded from whatever bytes
//! arrived, replies and output queued in an outbox that is written as the
//! socket takes it. The socket never blocks the agent: a host slow to read
//! one connection (an exec whose output it pipes into a slow consumer)
//! holds back that connection's process only, never the others.

use std::fmt::Display;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use bulkhead_protocol::{
    AgentMessage, FrameDecoder, HostMessage, Message, ProtocolError, PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::log::agent_log;
use crate::transport::Connection;

/// Past this much unsent data, the connection's process output is no
/// longer read (so the process blocks on its pipe, not the agent).
const OUTBOX_HIGH_WATER: usize = 256 << 10;

/// Bytes read from the host at once.
const READ_CHUNK: usize = 64 << 10;

/// The connection is gone (or unusable); its session must end.
#[derive(Debug)]
pub struct Disconnected;

pub struct Link {
    conn: Connection,
    decoder: FrameDecoder,
    greeted: bool,
    /// Encoded frames for the host; the first `written` bytes are sent.
    outbox: Vec<u8>,
    written: usize,
}

impl Link {
    pub fn new(conn: Connection) -> std::io::Result<Link> {
        conn.set_nonblocking()?;
        Ok(Link {
            conn,
            decoder: FrameDecoder::new(),
            greeted: false,
            outbox: Vec::new(),
            written: 0,
        })
    }

    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Answers the connection's first message, which must be Hello with
    /// our version; anything else ends the connection.
    pub fn greet(&mut self, msg: HostMessage) -> Result<(), Disconnected> {
        let HostMessage::Hello { version } = msg else {
            self.error("expected Hello first")?;
            return Err(Disconnected);
        };
        self.send(&AgentMessage::Hello {
            version: PROTOCOL_VERSION,
        })?;
        if version != PROTOCOL_VERSION {
            self.error(ProtocolError::VersionMismatch {
                host: version,
                agent: PROTOCOL_VERSION,
            })?;
            return Err(Disconnected);
        }
        self.greeted = true;
        Ok(())
    }

    /// Queues `msg` and writes what the socket takes now.
    pub fn send(&mut self, msg: &AgentMessage) -> Result<(), Disconnected> {
        if let Err(e) = msg.encode(&mut self.outbox) {
            agent_log!("cannot encode a message for the host: {e}");
            return Err(Disconnected);
        }
        self.flush()
    }

    pub fn error(&mut self, message: impl Display) -> Result<(), Disconnected> {
        self.send(&AgentMessage::Error {
            message: message.to_string(),
        })
    }

    /// Writes queued data until the socket is full or the outbox empty.
    pub fn flush(&mut self) -> Result<(), Disconnected> {
        while self.written < self.outbox.len() {
            match self.conn.write(&self.outbox[self.written..]) {
                Ok(0) => return Err(self.lost("wrote nothing")),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.lost(e)),
            }
        }
        if self.written == self.outbox.len() {
            self.outbox.clear();
            self.written = 0;
        } else if self.written > self.outbox.len() / 2 {
            self.outbox.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }

    fn lost(&self, why: impl Display) -> Disconnected {
        agent_log!("lost the host connection: {why}");
        Disconnected
    }

    /// Data waits for the socket to take it.
    pub fn wants_write(&self) -> bool {
        self.written < self.outbox.len()
    }

    /// So much waits that the process's output should wait too.
    pub fn is_backlogged(&self) -> bool {
        self.outbox.len() - self.written >= OUTBOX_HIGH_WATER
    }

    /// Reads what the host sent and decodes every complete message in it.
    /// A frame that does not decode comes back as its error, after which
    /// nothing is decoded if the stream is out of sync.
    pub fn receive(&mut self) -> Result<Vec<Result<HostMessage, ProtocolError>>, Disconnected> {
        let mut buf = [0u8; READ_CHUNK];
        let n = loop {
            match self.conn.read(&mut buf) {
                Ok(0) => {
                    if self.decoder.buffered() > 0 {
                        agent_log!("host hung up in the middle of a frame");
                    }
                    return Err(Disconnected);
                }
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Vec::new()),
                Err(e) => {
                    agent_log!("cannot read from the host: {e}");
                    return Err(Disconnected);
                }
            }
        };
        self.decoder.push(&buf[..n]);
        let mut messages = Vec::new();
        loop {
            match self.decoder.next_message::<HostMessage>() {
                Ok(None) => break,
                Ok(Some(msg)) => messages.push(Ok(msg)),
                Err(e) => {
                    let fatal = e.is_fatal();
                    messages.push(Err(e));
                    if fatal {
                        break;
                    }
                }
            }
        }
        Ok(messages)
    }

    /// Writes what is queued, waiting up to `timeout` for the socket: the
    /// last replies of a connection about to close.
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.wants_write() {
            if self.flush().is_err() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.conn.as_fd(), PollFlags::POLLOUT)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// Ends what we send (once the outbox is written): the host reads to
    /// the end of it, and its own writes still go through.
    pub fn shutdown_write(&mut self) -> Result<(), Disconnected> {
        self.conn
            .shutdown_write()
            .map_err(|e| self.lost(format!("cannot half-close: {e}")))
    }

    /// Reads and drops whatever the host sent that was not read: closing
    /// a socket with unread data makes the host's next read fail with a
    /// reset instead of a clean end of stream.
    pub fn discard_input(&mut self) {
        let mut buf = [0u8; READ_CHUNK];
        // Bounded: a host that keeps sending does not keep us here.
        for _ in 0..16 {
            match self.conn.read(&mut buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => return,
            }
        }
    }

    /// Sends what is queued, ends our side and waits (up to `timeout`)
    /// for the host to close its side, so that everything was received.
    pub fn linger(&mut self, timeout: Duration) {
        self.drain(timeout);
        self.conn.linger(timeout);
    }
}

impl AsFd for Link {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}
