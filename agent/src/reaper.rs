//! SIGCHLD handling and reaping.
//!
//! SIGCHLD is blocked and read from a signalfd so the event loop can poll
//! it next to the sockets. Every reap is `waitpid(-1)`, which collects
//! orphans re-parented to us as PID 1 too; the container's own status is
//! recognised by pid and handed back, never dropped.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub struct Reaper {
    fd: SignalFd,
}

impl Reaper {
    /// Blocks SIGCHLD for this (single-threaded) process and opens the
    /// signalfd. Must run before any child is created.
    pub fn new() -> nix::Result<Reaper> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Reaper { fd })
    }

    /// Consumes the pending SIGCHLD notifications and reaps every exited
    /// child. Returns the status of `watched` if it was among them.
    pub fn reap(&mut self, watched: Option<Pid>) -> Option<WaitStatus> {
        // SIGCHLD is not a queued signal: at most one is pending, so one
        // read clears it, and the waitpid loop catches every child anyway.
        let _ = self.fd.read_signal();
        let mut found = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    if status.pid().is_some() && status.pid() == watched {
                        found = Some(status);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        found
    }
}

impl AsFd for Reaper {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits for one specific child, retrying on EINTR.
pub fn wait_for(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => {}
            other => return other,
        }
    }
}
