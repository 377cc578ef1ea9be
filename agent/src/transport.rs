//! The listening socket: vsock in the guest, a Unix socket on a host.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr,
};
use thiserror::Error;

use crate::config::Listen;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot listen on vsock port {port}: {source}")]
    Vsock { port: u32, source: nix::Error },
    #[error("cannot listen on Unix socket {path}: {source}")]
    Unix { path: PathBuf, source: io::Error },
}

pub enum Listener {
    Vsock(OwnedFd),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl Listener {
    pub fn bind(listen: &Listen) -> Result<Listener, TransportError> {
        match listen {
            Listen::Vsock { port } => {
                bind_vsock(*port)
                    .map(Listener::Vsock)
                    .map_err(|source| TransportError::Vsock {
                        port: *port,
                        source,
                    })
            }
            Listen::Unix(path) => {
                // A socket file left by a previous run would make bind fail.
                let _ = std::fs::remove_file(path);
                UnixListener::bind(path)
                    .map(|listener| Listener::Unix {
                        listener,
                        path: path.clone(),
                    })
                    .map_err(|source| TransportError::Unix {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// Takes the next host connection (blocking).
    pub fn accept(&self) -> io::Result<Connection> {
        let fd = match self {
            Listener::Vsock(fd) => accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?,
            Listener::Unix { listener, .. } => return Ok(Connection(listener.accept()?.0.into())),
        };
        // SAFETY: accept4 just returned this descriptor and nothing else owns it.
        Ok(Connection(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

fn bind_vsock(port: u32) -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(4)?)?;
    Ok(fd)
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Vsock(fd) => fd.as_fd(),
            Listener::Unix { listener, .. } => listener.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One host connection: a connected stream socket of either family.
pub struct Connection(OwnedFd);

impl Connection {
    /// Makes reads and writes return `WouldBlock` instead of waiting: the
    /// agent serves several connections from one poll loop.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        let flags = OFlag::from_bits_truncate(fcntl(self.0.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            self.0.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        Ok(())
    }

    /// Ends our sending side: the peer reads to the end of what we sent,
    /// and may still send.
    pub fn shutdown_write(&self) -> io::Result<()> {
        Ok(nix::sys::socket::shutdown(
            self.0.as_raw_fd(),
            Shutdown::Write,
        )?)
    }

    /// Ends our side and waits (up to `timeout`) for the peer to close
    /// its side, so everything we sent has been received.
    pub fn linger(&mut self, timeout: Duration) {
        if self.shutdown_write().is_err() {
            return;
        }
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) if n > 0 => {}
                Err(Errno::EINTR) => continue,
                _ => return,
            }
            match self.read(&mut buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return,
            }
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(self.0.as_raw_fd(), buf)?)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(nix::unistd::write(&self.0, buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
