//! The `CONNECT <port>\n` line a host program sends after connecting to the
//! vsock Unix socket, naming the guest port it wants.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

/// Longest line accepted, newline included ("CONNECT 4294967295\n" is 19).
const MAX_LINE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("host peer closed the socket before sending CONNECT")]
    Closed,
    #[error("CONNECT line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("malformed CONNECT line {0:?}")]
    Malformed(String),
    #[error("cannot read the CONNECT line: {0}")]
    Io(#[from] io::Error),
}

/// A host connection that has not named its guest port yet.
#[derive(Debug)]
pub struct HostConnect {
    pub stream: UnixStream,
    line: Vec<u8>,
    pub registered: Option<EventSet>,
}

impl HostConnect {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            line: Vec::with_capacity(MAX_LINE),
            registered: None,
        }
    }

    /// Reads what has arrived of the line; `Some(port)` once it is complete.
    ///
    /// Data the host sends after the newline belongs to the stream, so the
    /// line is peeked first and only consumed up to the newline.
    pub fn poll_line(&mut self) -> Result<Option<u32>, HandshakeError> {
        let mut buf = [0u8; MAX_LINE];
        let room = MAX_LINE - self.line.len();
        let peeked = match recv(
            self.stream.as_raw_fd(),
            &mut buf[..room],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(None),
            Err(e) => return Err(io::Error::from(e).into()),
        };
        let take = buf[..peeked]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(peeked, |p| p + 1);
        self.stream.read_exact(&mut buf[..take])?;
        self.line.extend_from_slice(&buf[..take]);
        if self.line.last() == Some(&b'\n') {
            return parse_connect(&self.line).map(Some);
        }
        if self.line.len() >= MAX_LINE {
            return Err(HandshakeError::TooLong);
        }
        Ok(None)
    }
}

/// Parses `CONNECT <port>\n` (a trailing `\r` is tolerated).
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    let malformed = || HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ").ok_or_else(malformed)?;
    port.trim().parse().map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n").unwrap(), 52);
        assert_eq!(parse_connect(b"CONNECT 4294967295\r\n").unwrap(), u32::MAX);
        for bad in [
            &b"CONNECT\n"[..],
            b"connect 5\n",
            b"CONNECT -1\n",
            b"CONNECT 99999999999\n",
            b"\xff\n",
        ] {
            assert!(parse_connect(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn line_split_over_writes_keeps_trailing_data() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut hc = HostConnect::new(ours);
        assert!(hc.poll_line().unwrap().is_none());
        host.write_all(b"CONN").unwrap();
        assert!(hc.poll_line().unwrap().is_none());
        host.write_all(b"ECT 1234\npayload").unwrap();
        assert_eq!(hc.poll_line().unwrap(), Some(1234));
        let mut rest = [0u8; 7];
        hc.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"payload");
    }

    #[test]
    fn overlong_or_closed() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut hc = HostConnect::new(ours);
        host.write_all(&[b'A'; 40]).unwrap();
        assert!(matches!(hc.poll_line(), Err(HandshakeError::TooLong)));

        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut hc = HostConnect::new(ours);
        drop(host);
        assert!(matches!(hc.poll_line(), Err(HandshakeError::Closed)));
    }
}
