//! Namespaces: creating the container's init in fresh ones, and the bits
//! of per-namespace setup (hostname, loopback).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// New pid, mount, uts, ipc and net namespaces at clone time. The cgroup
/// namespace comes later, from inside: it must be rooted at the
/// container's cgroup, which the child joins first.
pub fn clone_flags() -> CloneFlags {
    CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
}

/// What `clone_process` returns in each process.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2) into new namespaces: `clone` with no new stack, so the child
/// continues on a copy of ours exactly like fork. The child is PID 1 of the
/// new pid namespace.
///
/// # Safety
/// Same contract as `fork` in a single-threaded process: the agent never
/// starts threads, so the child may use the heap; it must end in exec or
/// `_exit`, never return into the agent's own logic.
pub unsafe fn clone_process(flags: CloneFlags) -> nix::Result<Forked> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: the raw clone syscall with a null stack behaves like fork();
    // the caller upholds fork's contract (see above).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as libc::pid_t))),
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
        let f = clone_flags();
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
