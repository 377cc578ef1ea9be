//! `--console-socket`: the container's terminal is a pty on the host whose
//! master goes to the engine over a Unix socket (SCM_RIGHTS, the pty's
//! name as the message, as runc sends it); the slave becomes the monitor's
//! stdio and controlling terminal.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::Context;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// Makes a pty, sends its master to `socket` and returns the slave.
pub fn send_master(socket: &Path) -> anyhow::Result<OwnedFd> {
    let pty = nix::pty::openpty(None, None).context("cannot open a pty")?;
    let name = slave_name(&pty.slave);
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to the console socket {}", socket.display()))?;
    let fds = [pty.master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .with_context(|| format!("cannot send the pty to {}", socket.display()))?;
    Ok(pty.slave)
}

fn slave_name(slave: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/ptmx".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::{IoSliceMut, Read, Write};
    use std::os::fd::FromRawFd;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_master_arrives_and_talks_to_the_slave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let slave = send_master(&path).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("a descriptor");
        // SAFETY: the descriptor just arrived and is ours alone.
        let mut master = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut slave = std::fs::File::from(slave);
        slave.write_all(b"hi\n").unwrap();
        let mut got = [0u8; 2];
        master.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }
}
