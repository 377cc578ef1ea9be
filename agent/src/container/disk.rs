//! Block devices given at restore: in a template the disks are empty slots
//! (capacity 0); after the restore the host attaches the real files and
//! raises a config-change interrupt, so the guest learns the capacity
//! asynchronously. Before mounting, wait for it and drop whatever the
//! kernel cached of the device while it was empty.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::clock::boottime_ns;

/// `_IO(0x12, 97)`: writes back and invalidates the device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// How long a disk may take to appear after a restore.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Between two looks at the size: each look is one pread (~0.5 ms in the
/// guest), so 5 ms keeps the waiting agent to ~10% of a vCPU.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("disk {device} still has no capacity after {waited:?}: the host did not attach it")]
    NotAttached { device: PathBuf, waited: Duration },
    #[error("cannot read the size of disk {device} from {sysfs}: {source}")]
    Size {
        device: PathBuf,
        sysfs: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot flush the buffers of disk {device}: {source}")]
    Flush { device: PathBuf, source: Errno },
}

/// The sysfs size file of the block device node `device` (found by its
/// device number, so /dev/disk/by-* links work too); `None` when `device`
/// is not a block device node, which the mount itself then reports.
fn size_file(device: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(device).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some(PathBuf::from(format!(
        "/sys/dev/block/{}:{}/size",
        libc::major(rdev),
        libc::minor(rdev)
    )))
}

/// Parses a sysfs `size` file: the capacity in 512-byte sectors.
pub fn parse_sectors(text: &[u8]) -> u64 {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (up to `timeout`) until `device` has a capacity, then flushes its
/// buffer cache. On a cold boot the size is there at the first read.
pub fn await_disk(device: &Path, timeout: Duration) -> Result<(), DiskError> {
    let Some(sysfs) = size_file(device) else {
        return Ok(());
    };
    let size_err = |source| DiskError::Size {
        device: device.to_path_buf(),
        sysfs: sysfs.clone(),
        source,
    };
    let file = File::open(&sysfs).map_err(size_err)?;
    let deadline = boottime_ns().saturating_add(timeout.as_nanos() as u64);
    let mut buf = [0u8; 32];
    loop {
        // sysfs regenerates the value on every read from offset 0.
        let n = file.read_at(&mut buf, 0).map_err(size_err)?;
        if parse_sectors(&buf[..n]) > 0 {
            break;
        }
        if boottime_ns() >= deadline {
            return Err(DiskError::NotAttached {
                device: device.to_path_buf(),
                waited: timeout,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    flush_buffers(device)
}

/// BLKFLSBUF: no block the kernel read while the slot was empty (partition
/// scan, probing) may stand in for the attached file's content.
fn flush_buffers(device: &Path) -> Result<(), DiskError> {
    let flush_err = |source| DiskError::Flush {
        device: device.to_path_buf(),
        source,
    };
    let raw = nix::fcntl::open(device, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(flush_err)?;
    // SAFETY: open just returned this descriptor; nothing else owns it.
    let dev = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: BLKFLSBUF takes no argument and only acts on the device.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF, 0) } < 0 {
        return Err(flush_err(Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes() {
        assert_eq!(parse_sectors(b"2097152\n"), 2_097_152);
        assert_eq!(parse_sectors(b"0\n"), 0);
        assert_eq!(parse_sectors(b""), 0);
        assert_eq!(parse_sectors(b"junk"), 0);
    }

    #[test]
    fn non_devices_are_left_to_the_mount() {
        assert!(size_file(Path::new("/etc/passwd")).is_none());
        assert!(size_file(Path::new("/nonexistent/vda")).is_none());
        await_disk(Path::new("/nonexistent/vda"), Duration::ZERO).unwrap();
    }

    #[test]
    fn an_empty_slot_times_out_naming_the_device() {
        // A loop device with no file bound is a block device of size 0,
        // like a template's empty disk slot.
        let Some(dev) = (0..8)
            .map(|i| PathBuf::from(format!("/dev/loop{i}")))
            .find(|p| {
                size_file(p).is_some_and(|s| std::fs::read(s).is_ok_and(|t| parse_sectors(&t) == 0))
            })
        else {
            eprintln!("skipped: no unbound loop device");
            return;
        };
        let err = await_disk(&dev, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(err, DiskError::NotAttached { .. }), "{err}");
        assert!(
            err.to_string().contains(&dev.display().to_string()),
            "{err}"
        );
    }
}
