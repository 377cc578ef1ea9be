//! Running code in another network namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sched::{setns, CloneFlags};

use crate::NetlinkError;

/// Runs `f` with this thread in the network namespace at `netns` (an open
/// /proc/PID/ns/net or /run/netns/NAME), then returns the thread to the
/// namespace it was in. Sockets and TAPs made inside stay in that namespace.
///
/// [`NetlinkError::EnterNetns`]: `f` did not run. [`NetlinkError::RestoreNetns`]:
/// `f` ran (its result is lost) but the thread could not go back, and should
/// not be used for anything that depends on its namespace.
pub fn in_netns<T>(netns: BorrowedFd<'_>, f: impl FnOnce() -> T) -> Result<T, NetlinkError> {
    let own = File::open("/proc/thread-self/ns/net").map_err(NetlinkError::EnterNetns)?;
    setns(netns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetlinkError::EnterNetns(io::Error::from(e)))?;
    let mut guard = Return { own: Some(own) };
    let value = f();
    guard.back().map_err(NetlinkError::RestoreNetns)?;
    Ok(value)
}

/// Takes the thread back home, also when `f` unwinds.
struct Return {
    own: Option<File>,
}

impl Return {
    fn back(&mut self) -> io::Result<()> {
        match self.own.take() {
            Some(own) => setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from),
            None => Ok(()),
        }
    }
}

impl Drop for Return {
    fn drop(&mut self) {
        let _ = self.back();
    }
}
