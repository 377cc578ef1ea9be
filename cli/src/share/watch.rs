//! Noticing a virtiofsd that dies while its VM runs.
//!
//! A thread polls a pidfd of each daemon: the pidfd becomes readable when
//! the process exits, without reaping it (the owner's `Child` still does
//! that) and without the pid-reuse race of polling by pid.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Armed while held; dropping it means the daemons are being ended on
/// purpose, so their exit is not reported.
pub struct Watch {
    armed: Arc<AtomicBool>,
}

impl Watch {
    /// Watches `pids` (running children of ours, not yet reaped); calls
    /// `on_exit` once if any of them exits while armed. `None` where the
    /// kernel has no pidfds (before 5.3): runs are then not watched.
    pub fn start(pids: &[u32], on_exit: Box<dyn FnOnce() + Send>) -> Option<Watch> {
        let fds = pids
            .iter()
            .map(|&pid| pidfd_open(pid))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| log::debug!("cannot watch the virtiofsd processes: {e}"))
            .ok()?;
        let armed = Arc::new(AtomicBool::new(true));
        let flag = armed.clone();
        std::thread::Builder::new()
            .name("virtiofsd-watch".into())
            .spawn(move || {
                let mut polled: Vec<PollFd> = fds
                    .iter()
                    .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                    .collect();
                loop {
                    match poll(&mut polled, PollTimeout::NONE) {
                        Err(Errno::EINTR) => continue,
                        Err(e) => {
                            log::debug!("virtiofsd watch: poll failed: {e}");
                            return;
                        }
                        Ok(_) => break,
                    }
                }
                if flag.load(Ordering::SeqCst) {
                    on_exit();
                }
            })
            .map_err(|e| log::debug!("cannot start the virtiofsd watch: {e}"))
            .ok()?;
        Some(Watch { armed })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just made for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
