//! The host side of TAP tests: a network namespace of the test's own,
//! links brought up in it, and an AF_PACKET socket on the TAP that sees
//! exactly the frames the device writes and injects frames for it to read.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::rig::ETHERTYPE;

/// Runs `f` on a thread of its own in a new network namespace, so the
/// test's TAPs and frames never touch the host's network (and the test
/// harness's threads stay where they are). Skips (passes) only where a
/// namespace cannot be made at all (not root).
pub fn in_new_netns(f: impl FnOnce() + Send + 'static) {
    let ran = std::thread::spawn(move || {
        match nix::sched::unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => {}
            Err(Errno::EPERM) => {
                eprintln!("skipping: cannot create a network namespace (not root)");
                return;
            }
            Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
        }
        f();
    })
    .join();
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}

/// An AF_INET socket for interface ioctls in this thread's namespace.
fn ioctl_socket() -> OwnedFd {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Brings the link `name` up, with `mtu` if given. IPv6 is turned off on
/// it first, so the kernel sends no router solicitations of its own.
pub fn link_up(name: &str, mtu: Option<u32>) {
    // This thread's namespace: /proc/sys/net follows the calling task.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let sock = ioctl_socket();
    let mut req = ifreq(name);
    if let Some(mtu) = mtu {
        req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        // SAFETY: SIOCSIFMTU reads an ifreq we own.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req) };
        assert_eq!(
            rc,
            0,
            "SIOCSIFMTU {name}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: SIOCGIFFLAGS fills the ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(
        rc,
        0,
        "SIOCGIFFLAGS {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: SIOCGIFFLAGS just set the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    assert_eq!(
        rc,
        0,
        "SIOCSIFFLAGS {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// A raw packet socket bound to one interface.
pub struct PacketSocket(OwnedFd);

const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;

impl PacketSocket {
    pub fn bind(ifname: &str) -> Self {
        let name = CString::new(ifname).unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {ifname}");
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: bind reads a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        Self(fd)
    }

    /// Sends `frame` (an Ethernet frame) out the interface: into the TAP,
    /// towards the device.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes of `frame`.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame of this test (by Ethernet type) that came in from
    /// the TAP, i.e. that the device wrote; `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll reads and writes the one pollfd we own.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if ready <= 0 {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom writes at most `buf.len()` bytes into `buf`
            // and at most `from_len` bytes into `from`.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                continue;
            }
            let frame = &buf[..n as usize];
            // Our own sends show up too, as outgoing.
            if from.sll_pkttype != libc::PACKET_OUTGOING && frame.get(12..14) == Some(&ETHERTYPE) {
                return Some(frame.to_vec());
            }
        }
    }
}
