//! Namespaces: which ones the container's init gets, and the bits of
//! per-namespace setup (loopback).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;

/// New pid, mount, uts and ipc namespaces at clone time, and a new net
/// namespace unless the init joins one made beforehand. The cgroup
/// namespace comes later, from inside: it must be rooted at the
/// container's cgroup, which the child joins first.
pub fn clone_flags(new_net: bool) -> CloneFlags {
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if new_net {
        flags | CloneFlags::CLONE_NEWNET
    } else {
        flags
    }
}

/// Brings up `lo` in the (new, otherwise empty) network namespace, as
/// Docker's `--network none` does.
pub fn loopback_up() -> nix::Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // A new namespace's lo is down with no other flags, so setting IFF_UP
    // alone (without reading the flags first) loses nothing.
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads a valid, initialised ifreq.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_include_every_namespace_but_cgroup() {
        assert!(!clone_flags(false).contains(CloneFlags::CLONE_NEWNET));
        let f = clone_flags(true);
        for ns in [
            CloneFlags::CLONE_NEWPID,
            CloneFlags::CLONE_NEWNS,
            CloneFlags::CLONE_NEWUTS,
            CloneFlags::CLONE_NEWIPC,
            CloneFlags::CLONE_NEWNET,
        ] {
            assert!(f.contains(ns));
        }
        assert!(!f.contains(CloneFlags::CLONE_NEWCGROUP));
        assert!(!f.contains(CloneFlags::CLONE_NEWUSER));
    }
}
