//! What every container needs and is the same each time, made once when
//! the agent starts, so that it is already there in a template snapshot:
//! an empty cgroup (creating one allocates every controller's state) and a
//! network namespace with `lo` up (creating one runs every network
//! subsystem's per-namespace setup). Each costs the guest kernel hundreds
//! of milliseconds on PVM hosts. The first container takes them; later
//! containers in the same VM make their own, as before.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};

use super::namespaces::loopback_up;
use crate::log::agent_log;

#[derive(Debug, Default)]
pub struct Prepared {
    cgroup: Option<PathBuf>,
    netns: Option<OwnedFd>,
}

impl Prepared {
    /// Nothing prepared: every container makes its own (host test runs).
    pub fn none() -> Prepared {
        Prepared::default()
    }

    /// Makes the spare cgroup under `cgroup_root` and the network
    /// namespace. Best effort: what fails is logged and made per container.
    pub fn make(cgroup_root: Option<&Path>) -> Prepared {
        let cgroup = cgroup_root.and_then(|root| {
            let path = root.join(format!("bulkhead-{}-spare", std::process::id()));
            std::fs::create_dir(&path)
                .map_err(|e| agent_log!("cannot prepare a cgroup at {}: {e}", path.display()))
                .ok()
                .map(|()| path)
        });
        let netns = make_netns()
            .map_err(|e| agent_log!("cannot prepare a network namespace: {e}"))
            .ok();
        Prepared { cgroup, netns }
    }

    /// The empty cgroup, for the container to take over.
    pub fn take_cgroup(&mut self) -> Option<PathBuf> {
        self.cgroup.take()
    }

    /// The network namespace (lo up), for the container's init to join.
    pub fn take_netns(&mut self) -> Option<OwnedFd> {
        self.netns.take()
    }
}

fn ns_file(path: &str) -> nix::Result<OwnedFd> {
    File::open(path)
        .map(Into::into)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// A new network namespace with `lo` up, without leaving ours: unshare
/// into it, set it up, keep a handle on it and go back.
pub fn make_netns() -> Result<OwnedFd, nix::Error> {
    let ours = ns_file("/proc/self/ns/net")?;
    unshare(CloneFlags::CLONE_NEWNET)?;
    let made = loopback_up().and_then(|()| ns_file("/proc/self/ns/net"));
    if let Err(e) = setns(ours.as_fd(), CloneFlags::CLONE_NEWNET) {
        // Our sockets (vsock) do not depend on it, but say so.
        agent_log!("cannot return to the agent's network namespace: {e}");
    }
    made
}
