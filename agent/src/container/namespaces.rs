//! Namespaces: which ones the container's init gets, the bits of
//! per-namespace setup (loopback), and finding the processes of a
//! container's pid namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

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

/// The namespaces a process exec'd into a container joins from inside
/// (with one `setns` on a pidfd of the container's init). The pid
/// namespace is not among them: joining one only applies to children, so
/// the agent joins it around the clone instead.
pub const EXEC_JOINED: CloneFlags = CloneFlags::CLONE_NEWNS
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// A pidfd for `pid`: a handle that cannot end up naming another process,
/// and that `setns` accepts for several namespaces at once.
pub fn pidfd_open(pid: Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new
    // descriptor (close-on-exec) or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// Every process in the pid namespace `pid` is the init of, as pids of
/// ours, found by comparing `/proc/*/ns/pid`: the list of a container
/// without a cgroup. Processes of namespaces nested in it are missed.
pub fn pid_namespace_members(pid: Pid) -> std::io::Result<Vec<u32>> {
    let ns_of = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/pid"));
    let target = ns_of(&pid.to_string())?;
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(n) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exited since the listing is simply not a member.
        if let Ok(ns) = ns_of(&n.to_string()) {
            if (ns.dev(), ns.ino()) == (target.dev(), target.ino()) {
                members.push(n);
            }
        }
    }
    members.sort_unstable();
    Ok(members)
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

    #[test]
    fn exec_joins_all_but_the_pid_and_user_namespaces() {
        for ns in [CloneFlags::CLONE_NEWPID, CloneFlags::CLONE_NEWUSER] {
            assert!(!EXEC_JOINED.contains(ns));
        }
        assert!(EXEC_JOINED.contains(CloneFlags::CLONE_NEWCGROUP));
    }

    #[test]
    fn members_of_our_own_pid_namespace_include_us() {
        let me = Pid::this();
        let members = pid_namespace_members(me).unwrap();
        assert!(members.contains(&(me.as_raw() as u32)));
        assert!(pidfd_open(me).is_ok());
        // No such process.
        assert!(pid_namespace_members(Pid::from_raw(i32::MAX)).is_err());
    }
}
