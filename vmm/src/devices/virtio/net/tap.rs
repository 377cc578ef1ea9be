//! The host end of a virtio-net device: a TAP interface opened through
//! `/dev/net/tun`, carrying whole Ethernet frames, each behind the
//! 12-byte `virtio_net_hdr_v1` the guest uses (IFF_VNET_HDR), so checksum
//! and segmentation offloads pass between the guest and the host kernel
//! untouched.
//!
//! The TAP is not persistent: it disappears with the last descriptor, so
//! a VMM that dies (even by `kill -9`) takes its TAP, and the TAP's bridge
//! port, with it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `IFNAMSIZ - 1`: the longest interface name.
pub const IFNAME_MAX: usize = 15;
/// `struct virtio_net_hdr_v1`: what precedes every frame on the TAP and in
/// the virtqueues (virtio 1.x always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

const TUN_PATH: &str = "/dev/net/tun";

// <linux/if_tun.h>
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_UFO: libc::c_uint = 0x10;
nix::ioctl_write_ptr_bad!(tun_set_iff, 0x400454ca, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_offload, 0x400454d0);
nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, 0x400454d8, libc::c_int);

/// Offloads the guest negotiated, to be let through the TAP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum (VIRTIO_NET_F_GUEST_CSUM).
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    pub ufo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is empty, longer than {IFNAME_MAX} bytes or not a plain name")]
    BadName(String),
    #[error("cannot open {TUN_PATH} (is the tun module loaded?): {0}")]
    OpenTun(#[source] io::Error),
    #[error("cannot create TAP {name}: {source}")]
    Create { name: String, source: io::Error },
    #[error("cannot configure TAP {name}: {source}")]
    Configure { name: String, source: io::Error },
}

/// An open TAP interface, non-blocking, with virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the TAP `name` in the calling thread's network namespace
    /// (or attaches to it, if a persistent one by that name exists).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() > IFNAME_MAX
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // SAFETY: TUNSETIFF reads a valid ifreq on a /dev/net/tun descriptor.
        unsafe { tun_set_iff(file.as_raw_fd(), &req) }.map_err(|e| TapError::Create {
            name: name.to_string(),
            source: e.into(),
        })?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int on a TAP descriptor.
        unsafe { tun_set_vnet_hdr_sz(tap.file.as_raw_fd(), &len) }
            .map_err(|e| tap.configure_error(e))?;
        tap.set_offloads(Offloads::default())?;
        Ok(tap)
    }

    /// A second handle on the same TAP (a restore that may be retried
    /// hands each try its own).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// A TAP another process opened (and configured) as [`Tap::open`]
    /// does, handed over by descriptor.
    pub fn from_handed_over(fd: std::os::fd::OwnedFd, name: String) -> Tap {
        Tap {
            file: File::from(fd),
            name,
        }
    }

    /// The interface's name on the host.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lets frames with the given offloads through (the ones the guest
    /// accepts); the host kernel finishes checksums and segments the rest.
    pub fn set_offloads(&self, o: Offloads) -> Result<(), TapError> {
        let mut flags = 0;
        if o.csum {
            flags |= TUN_F_CSUM;
            if o.tso4 {
                flags |= TUN_F_TSO4;
            }
            if o.tso6 {
                flags |= TUN_F_TSO6;
            }
            if o.ufo {
                flags |= TUN_F_UFO;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value on a TAP descriptor.
        unsafe { tun_set_offload(self.file.as_raw_fd(), flags as libc::c_int) }
            .map_err(|e| self.configure_error(e))?;
        Ok(())
    }

    /// Reads one frame (header included) into `buf`; `WouldBlock` when none
    /// is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        (&self.file).read(buf)
    }

    /// Writes one frame (header included) gathered from `bufs`.
    pub fn write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        use std::io::Write;
        (&self.file).write_vectored(bufs)
    }

    fn configure_error(&self, e: nix::Error) -> TapError {
        TapError::Configure {
            name: self.name.clone(),
            source: e.into(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
