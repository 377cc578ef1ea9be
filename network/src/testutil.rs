//! Test helpers for the kernel side: fresh network namespaces, TAPs, and
//! running code in a namespace. Nothing here touches the host's network.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};

use bulkhead_netlink::{in_netns, Netlink};

/// Whether kernel tests can run here; says why not.
pub(crate) fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return false;
    }
    let nft = Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !nft.is_ok_and(|s| s.success()) {
        eprintln!("skipped: needs nft (apt-get install nftables)");
        return false;
    }
    true
}

/// Runs `f` on a new thread in a new network namespace (lo up); processes
/// it spawns (nft) and threads it starts inherit that namespace. None when
/// the test cannot run here, after saying why.
pub(crate) fn in_fresh_netns<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if !can_run() {
        return None;
    }
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        lo_up();
        f()
    });
    Some(
        thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
    )
}

/// Another fresh network namespace (lo up), alive as long as the file.
pub(crate) fn fresh_netns() -> File {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        lo_up();
        File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net")
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `f` in the namespace `ns` (this thread comes back after).
pub(crate) fn inside<T>(ns: &File, f: impl FnOnce() -> T) -> T {
    in_netns(ns.as_fd(), f).expect("enter netns")
}

fn lo_up() {
    let mut nl = Netlink::open().unwrap();
    let lo = nl.link_index("lo").unwrap();
    nl.set_up(lo, true).unwrap();
}

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// A TAP `name` in the calling thread's netns, gone when the file closes.
pub(crate) fn tap(name: &str) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads a valid ifreq on a /dev/net/tun descriptor.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }
        .unwrap_or_else(|e| panic!("TUNSETIFF {name}: {e}"));
    file
}
