//! SIGCHLD handling and reaping.
//!
//! SIGCHLD is blocked and read from a signalfd so the event loop can poll
//! it next to the sockets. Every reap is `waitpid(-1)`, which collects
//! orphans re-parented to us as PID 1 too. The processes somebody waits
//! for (the container's init, processes exec'd into it) are *watched*:
//! their statuses are kept until their owner takes them, never dropped;
//! everything else is reaped and forgotten.

use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub struct Reaper {
    fd: SignalFd,
    /// Children whose statuses must reach an owner.
    watched: Vec<Pid>,
    /// Statuses of watched children, not taken yet.
    exited: Vec<WaitStatus>,
}

impl Reaper {
    /// Blocks SIGCHLD for this (single-threaded) process and opens the
    /// signalfd. Must run before any child is created.
    pub fn new() -> nix::Result<Reaper> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Reaper {
            fd,
            watched: Vec::new(),
            exited: Vec::new(),
        })
    }

    /// Keeps `pid`'s status for [`take`](Self::take). Call it right after
    /// creating the child, before the next reap.
    pub fn watch(&mut self, pid: Pid) {
        if !self.watched.contains(&pid) {
            self.watched.push(pid);
        }
    }

    /// Stops keeping `pid`'s status: it is dropped when reaped (or now, if
    /// it was reaped already).
    pub fn forget(&mut self, pid: Pid) {
        self.watched.retain(|&p| p != pid);
        self.exited.retain(|s| s.pid() != Some(pid));
    }

    /// The status of watched `pid`, once it has been reaped.
    pub fn take(&mut self, pid: Pid) -> Option<WaitStatus> {
        let i = self.exited.iter().position(|s| s.pid() == Some(pid))?;
        Some(self.exited.swap_remove(i))
    }

    /// Files a reaped status: kept if somebody watches it.
    fn file(&mut self, status: WaitStatus) {
        let Some(pid) = status.pid() else {
            return;
        };
        if let Some(i) = self.watched.iter().position(|&p| p == pid) {
            self.watched.swap_remove(i);
            self.exited.push(status);
        }
    }

    /// Consumes the pending SIGCHLD notifications and reaps every exited
    /// child, keeping the statuses of watched ones.
    pub fn reap(&mut self) {
        // SIGCHLD is not a queued signal: at most one is pending, so one
        // read clears it, and the waitpid loop catches every child anyway.
        let _ = self.fd.read_signal();
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => self.file(status),
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// Waits for `pid` to exit and returns its status; `None` if it is no
    /// child of ours (or was reaped and forgotten).
    ///
    /// A watched `pid` is waited for with `waitpid(-1)`, filing the other
    /// children's statuses meanwhile: a container's init cannot finish
    /// exiting while processes exec'd into its pid namespace (children of
    /// the agent) are unreaped zombies, so waiting for the init alone
    /// would never return.
    pub fn wait_for(&mut self, pid: Pid) -> Option<WaitStatus> {
        if let Some(status) = self.take(pid) {
            return Some(status);
        }
        if !self.watched.contains(&pid) {
            return loop {
                match waitpid(pid, None) {
                    Err(Errno::EINTR) => {}
                    other => break other.ok(),
                }
            };
        }
        loop {
            match waitpid(None, None) {
                Ok(status) if status.pid() == Some(pid) => {
                    self.watched.retain(|&p| p != pid);
                    return Some(status);
                }
                Ok(status) => self.file(status),
                Err(Errno::EINTR) => {}
                Err(_) => {
                    self.watched.retain(|&p| p != pid);
                    return None;
                }
            }
        }
    }
}

impl AsFd for Reaper {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
