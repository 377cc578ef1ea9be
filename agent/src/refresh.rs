//! Making a VM restored from a template its own: every clone resumes with
//! the same memory, so the same kernel RNG state and the template's wall
//! clock and hostname. The host sends fresh values with `Refresh`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use thiserror::Error;

/// `_IOW('R', 0x03, int[2])`: adds bytes to the input pool, crediting
/// `entropy_count` bits. Needs CAP_SYS_ADMIN.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseeds the CRNG from the input pool now, instead of
/// at its next periodic reseed (Linux >= 4.17).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The most entropy bytes accepted in one Refresh (the kernel's input pool
/// is 256 bits; more only costs copying).
pub const MAX_ENTROPY: usize = 4096;

/// Linux's HOST_NAME_MAX.
const MAX_HOSTNAME: usize = 64;

#[derive(Debug, Error)]
pub enum RefreshError {
    #[error("no entropy given")]
    NoEntropy,
    #[error("{0} bytes of entropy is more than the {MAX_ENTROPY} accepted")]
    TooMuchEntropy(usize),
    #[error("hostname {0:?} is empty or longer than {MAX_HOSTNAME} bytes")]
    BadHostname(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot add entropy: {0}")]
    AddEntropy(Errno),
    #[error("cannot reseed the kernel RNG: {0}")]
    Reseed(Errno),
    #[error("cannot set the clock: {0}")]
    Clock(Errno),
    #[error("cannot set the hostname: {0}")]
    Hostname(Errno),
}

/// What the host sent, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh<'a> {
    pub entropy: &'a [u8],
    pub realtime_ns: u64,
    pub hostname: Option<&'a str>,
}

impl Refresh<'_> {
    pub fn validate(&self) -> Result<(), RefreshError> {
        if self.entropy.is_empty() {
            return Err(RefreshError::NoEntropy);
        }
        if self.entropy.len() > MAX_ENTROPY {
            return Err(RefreshError::TooMuchEntropy(self.entropy.len()));
        }
        if let Some(h) = self.hostname {
            if h.is_empty() || h.len() > MAX_HOSTNAME || h.contains('\0') {
                return Err(RefreshError::BadHostname(h.to_string()));
            }
        }
        // Any u64 of ns is a valid time_t: no range to check.
        Ok(())
    }
}

/// The `struct rand_pool_info` RNDADDENTROPY reads: entropy_count (bits),
/// buf_size (bytes), then the bytes; as ints so it is int-aligned.
pub fn rand_pool_info(entropy: &[u8]) -> Vec<libc::c_int> {
    let words = entropy.len().div_ceil(4);
    let mut info = vec![0 as libc::c_int; 2 + words];
    info[0] = (entropy.len() * 8) as libc::c_int;
    info[1] = entropy.len() as libc::c_int;
    for (i, chunk) in entropy.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = libc::c_int::from_ne_bytes(word);
    }
    info
}

/// Applies a Refresh to the machine: only for the guest's PID 1. A host
/// run has no `Refresher`; the host's RNG, clock and name are not ours.
pub struct Refresher {
    /// Opened at start-up, before the template snapshot, so a Refresh costs
    /// two ioctls and no open.
    random: File,
}

impl Refresher {
    /// Opens the kernel RNG device (`/dev/urandom` in the guest).
    pub fn open(device: &Path) -> Result<Refresher, RefreshError> {
        let random = File::open(device).map_err(|source| RefreshError::Open {
            path: device.display().to_string(),
            source,
        })?;
        Ok(Refresher { random })
    }

    pub fn apply(&self, r: &Refresh<'_>) -> Result<(), RefreshError> {
        r.validate()?;
        reseed(&self.random, r.entropy)?;
        set_realtime(r.realtime_ns)?;
        if let Some(h) = r.hostname {
            nix::unistd::sethostname(h).map_err(RefreshError::Hostname)?;
        }
        Ok(())
    }
}

/// Mixes `entropy` into the pool behind `device` (credited in full: it
/// comes from the host's RNG) and reseeds the CRNG from it, so the next
/// random bytes differ from every sibling clone's.
pub fn reseed(device: &File, entropy: &[u8]) -> Result<(), RefreshError> {
    let info = rand_pool_info(entropy);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow the two ints; `info` holds exactly that.
    if unsafe { libc::ioctl(device.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(RefreshError::AddEntropy(Errno::last()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(device.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(RefreshError::Reseed(Errno::last()));
    }
    Ok(())
}

fn set_realtime(ns: u64) -> Result<(), RefreshError> {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(RefreshError::Clock(Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh(entropy: &[u8], hostname: Option<&'static str>) -> Refresh<'static> {
        Refresh {
            entropy: entropy.to_vec().leak(),
            realtime_ns: 1_700_000_000_000_000_000,
            hostname,
        }
    }

    #[test]
    fn pool_info_layout() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(info.len(), 4);
        assert_eq!((info[0], info[1]), (40, 5));
        assert_eq!(info[2].to_ne_bytes(), [1, 2, 3, 4]);
        assert_eq!(info[3].to_ne_bytes(), [5, 0, 0, 0]);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(refresh(&[1; 32], Some("clone-1")).validate().is_ok());
        assert!(refresh(&[1; 32], None).validate().is_ok());
        assert!(matches!(
            refresh(&[], None).validate(),
            Err(RefreshError::NoEntropy)
        ));
        assert!(matches!(
            refresh(&[0; MAX_ENTROPY + 1], None).validate(),
            Err(RefreshError::TooMuchEntropy(_))
        ));
        let long: &'static str = "x".repeat(65).leak();
        for h in ["", long, "a\0b"] {
            assert!(matches!(
                refresh(&[1], Some(h)).validate(),
                Err(RefreshError::BadHostname(_))
            ));
        }
        let r = Refresh {
            realtime_ns: u64::MAX,
            ..refresh(&[1], None)
        };
        assert!(r.validate().is_ok(), "u64 ns always fit in time_t");
    }

    #[test]
    fn reseed_needs_the_rng_device() {
        // A regular file: the ioctl is refused before anything is mixed in,
        // so the host's RNG is untouched.
        let f = File::open("/proc/self/stat").unwrap();
        assert!(matches!(
            reseed(&f, &[1, 2, 3]),
            Err(RefreshError::AddEntropy(Errno::ENOTTY))
        ));
    }
}
