//! The report channel from the container's init to the agent.
//!
//! A SOCK_SEQPACKET pair: messages keep their boundaries and can carry the
//! pty master (SCM_RIGHTS) from the init, which opens it inside the
//! container's own devpts. The init's end is close-on-exec, so a
//! successful exec shows up as end-of-stream.
//!
//! The init shares the agent's memory until it execs (CLONE_VM), so its
//! side sends from the stack only: no allocation, fixed-size records.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

const PTY: u8 = b'T';
const FAILED: u8 = b'E';

/// A failed setup step of the init: which step (a `child::Step` code),
/// which item of it (a mount, an rlimit...), and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: u32,
    pub index: u32,
    pub errno: i32,
}

const FAILURE_LEN: usize = 1 + 12;

impl Failure {
    fn encode(&self) -> [u8; FAILURE_LEN] {
        let mut out = [0u8; FAILURE_LEN];
        out[0] = FAILED;
        out[1..5].copy_from_slice(&self.step.to_le_bytes());
        out[5..9].copy_from_slice(&self.index.to_le_bytes());
        out[9..13].copy_from_slice(&self.errno.to_le_bytes());
        out
    }

    fn decode(body: &[u8]) -> Option<Failure> {
        let word = |i: usize| body.get(i..i + 4)?.try_into().ok();
        Some(Failure {
            step: u32::from_le_bytes(word(0)?),
            index: u32::from_le_bytes(word(4)?),
            errno: i32::from_le_bytes(word(8)?),
        })
    }
}

/// What the init reports.
#[derive(Debug)]
pub enum Report {
    /// The pty master, opened in the container's devpts.
    Pty(OwnedFd),
    Failed(Failure),
    /// Something the agent cannot read: a bug, reported as such.
    Garbled,
    /// The channel closed: the init exec'd (or died).
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

fn sendmsg_raw(fd: RawFd, bytes: &[u8], pass: Option<RawFd>) -> Result<(), Errno> {
    // Room for one SCM_RIGHTS fd, aligned for cmsghdr.
    #[repr(C, align(8))]
    struct Control([u8; 32]);
    let mut control = Control([0; 32]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(passed) = pass {
        // SAFETY: CMSG_SPACE/LEN are arithmetic on a constant size.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32),
                libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32),
            )
        };
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space as usize;
        // SAFETY: msg_control points at `space` <= 32 writable, aligned
        // bytes, so the first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), passed);
        }
    }
    loop {
        // SAFETY: msg and everything it points to live through the call.
        if unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) } >= 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => {}
            e => return Err(e),
        }
    }
}

/// Init: the pty master for the agent. Allocation-free.
pub fn send_pty(fd: RawFd, master: RawFd) -> Result<(), Errno> {
    sendmsg_raw(fd, &[PTY], Some(master))
}

/// Init: a setup step failed. Allocation-free.
pub fn send_failure(fd: RawFd, failure: &Failure) -> Result<(), Errno> {
    sendmsg_raw(fd, &failure.encode(), None)
}

/// Agent: the init's next report.
pub fn recv_report(fd: BorrowedFd<'_>) -> nix::Result<Report> {
    let mut buf = [0u8; 64];
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
        return Ok(match (buf[..n].split_first(), passed) {
            (None, _) => Report::Closed,
            (Some((&PTY, _)), Some(master)) => Report::Pty(master),
            (Some((&FAILED, body)), _) => {
                Failure::decode(body).map_or(Report::Garbled, Report::Failed)
            }
            _ => Report::Garbled,
        });
    }
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

        send_pty(a.as_raw_fd(), file.as_raw_fd()).unwrap();
        match recv_report(b.as_fd()).unwrap() {
            Report::Pty(fd) => {
                let mut f = std::fs::File::from(fd);
                f.rewind().unwrap();
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                assert_eq!(s, "through the socket");
            }
            other => panic!("{other:?}"),
        }

        let failure = Failure {
            step: 4,
            index: 17,
            errno: libc::EPERM,
        };
        send_failure(a.as_raw_fd(), &failure).unwrap();
        match recv_report(b.as_fd()).unwrap() {
            Report::Failed(f) => assert_eq!(f, failure),
            other => panic!("{other:?}"),
        }
        drop(a);
        assert!(matches!(recv_report(b.as_fd()).unwrap(), Report::Closed));
    }

    #[test]
    fn short_records_are_garbled() {
        assert_eq!(Failure::decode(&[1, 2, 3]), None);
    }
}
