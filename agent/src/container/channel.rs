//! The setup channel between the agent and the container's init.
//!
//! A SOCK_SEQPACKET pair: messages keep their boundaries and can carry the
//! pty master (SCM_RIGHTS) from the child, which opens it inside the
//! container's own devpts. The child's end is close-on-exec, so a
//! successful exec shows up as end-of-stream.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

const READY: u8 = b'R';
const FAILED: u8 = b'E';
const START: u8 = b'S';

/// Longest error text sent; the rest is cut.
const MAX_MESSAGE: usize = 4000;

/// What the child reports.
#[derive(Debug)]
pub enum Report {
    /// Set up and waiting for Start (with the pty master if any).
    Ready(Option<OwnedFd>),
    Failed(String),
    /// The channel closed: the child exec'd (after Start) or died.
    Closed,
}

pub fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

fn send(fd: BorrowedFd<'_>, bytes: &[u8], pass: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    let raw: Vec<RawFd> = pass.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    loop {
        match sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        ) {
            Err(Errno::EINTR) => {}
            other => return other.map(drop),
        }
    }
}

/// Child: setup done, waiting for Start.
pub fn send_ready(fd: BorrowedFd<'_>, pty_master: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    send(fd, &[READY], pty_master)
}

/// Child: setup or pre-exec step failed.
pub fn send_failed(fd: BorrowedFd<'_>, message: &str) -> nix::Result<()> {
    let mut bytes = vec![FAILED];
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    bytes.extend_from_slice(&message.as_bytes()[..end]);
    send(fd, &bytes, None)
}

/// Agent: go ahead and exec.
pub fn send_start(fd: BorrowedFd<'_>) -> nix::Result<()> {
    send(fd, &[START], None)
}

fn recv(fd: BorrowedFd<'_>) -> nix::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => other?,
        };
        let mut passed = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: the kernel just installed this descriptor in
                    // our table for us; nothing else refers to it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    passed.get_or_insert(owned);
                }
            }
        }
        let n = msg.bytes;
        buf.truncate(n);
        return Ok((buf, passed));
    }
}

/// Agent: waits for the child's next report.
pub fn recv_report(fd: BorrowedFd<'_>) -> nix::Result<Report> {
    let (bytes, passed) = recv(fd)?;
    Ok(match bytes.split_first() {
        None => Report::Closed,
        Some((&READY, _)) => Report::Ready(passed),
        Some((&FAILED, msg)) => Report::Failed(String::from_utf8_lossy(msg).into_owned()),
        Some((other, _)) => Report::Failed(format!("container init sent unknown report {other}")),
    })
}

/// Child: waits for Start. `false` means the agent went away.
pub fn wait_start(fd: BorrowedFd<'_>) -> bool {
    matches!(recv(fd), Ok((bytes, _)) if bytes.first() == Some(&START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[test]
    fn reports_round_trip_with_a_passed_fd() {
        let (a, b) = pair().unwrap();
        let mut file = std::fs::File::from(
            nix::sys::memfd::memfd_create(
                c"bulkhead-channel-test",
                nix::sys::memfd::MemFdCreateFlag::empty(),
            )
            .unwrap(),
        );
        file.write_all(b"through the socket").unwrap();

        send_ready(a.as_fd(), Some(file.as_fd())).unwrap();
        match recv_report(b.as_fd()).unwrap() {
            Report::Ready(Some(fd)) => {
                let mut f = std::fs::File::from(fd);
                f.rewind().unwrap();
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                assert_eq!(s, "through the socket");
            }
            other => panic!("{other:?}"),
        }

        send_failed(a.as_fd(), &"é".repeat(3000)).unwrap();
        match recv_report(b.as_fd()).unwrap() {
            Report::Failed(m) => assert!(m.len() <= MAX_MESSAGE && m.starts_with('é')),
            other => panic!("{other:?}"),
        }

        send_start(b.as_fd()).unwrap();
        assert!(wait_start(a.as_fd()));
        drop(a);
        assert!(matches!(recv_report(b.as_fd()).unwrap(), Report::Closed));
        assert!(!wait_start(b.as_fd()));
    }
}
