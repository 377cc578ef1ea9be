//! The raw image file behind a block device.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestMemoryMmap};

use super::request::{Segment, SECTOR_SIZE};

/// Length of the identifier GET_ID returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened (missing, no permission, ...).
    #[error("cannot open disk image {}: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    /// The path names a directory, socket or similar.
    #[error("disk image {} is not a regular file or block device", .path.display())]
    NotADisk { path: PathBuf },
    /// The image size could not be determined.
    #[error("cannot determine the size of disk image {}: {source}", .path.display())]
    Size { path: PathBuf, source: io::Error },
    /// Creating the device's eventfds failed.
    #[error("cannot set up virtio-blk for {}: {source}", .path.display())]
    Setup { path: PathBuf, source: io::Error },
    /// Creating an empty slot's eventfds failed.
    #[error("cannot set up an empty virtio-blk slot: {0}")]
    SlotSetup(#[source] io::Error),
}

/// An open image, its size in sectors and the serial reported to the guest.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    read_only: bool,
    sectors: u64,
    serial: [u8; SERIAL_LEN],
}

impl DiskImage {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let with_path = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(with_path)?;
        let meta = file.metadata().map_err(with_path)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        // Seeking to the end also sizes block devices, whose metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "virtio-blk: {} is not a whole number of sectors; the last {} bytes are unreachable",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        // Device and inode identify the file for as long as it exists, so the
        // guest sees a stable serial across boots of the same image.
        let mut serial = [0u8; SERIAL_LEN];
        let id = format!("{:x}{:x}", meta.dev(), meta.ino());
        let n = id.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            read_only,
            sectors: size / SECTOR_SIZE,
            serial,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.serial
    }

    /// Reads the image from byte `offset` into the guest buffers `segs`.
    pub fn read_to_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
    ) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        for seg in segs {
            mem.read_exact_volatile_from(seg.addr, &mut self.file, seg.len as usize)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Writes the guest buffers `segs` to the image at byte `offset`.
    pub fn write_from_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
    ) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "disk is read-only",
            ));
        }
        self.file.seek(SeekFrom::Start(offset))?;
        for seg in segs {
            mem.write_all_volatile_to(seg.addr, &mut self.file, seg.len as usize)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Makes completed writes durable.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn open_errors_name_the_path() {
        let dir = TempDir::new().unwrap();
        let missing = dir.as_path().join("nope.img");
        let err = DiskImage::open(&missing, true).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nope.img"), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");

        let err = DiskImage::open(dir.as_path(), true).unwrap_err();
        assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");
    }

    #[test]
    fn size_and_serial() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("d.img");
        std::fs::write(&path, vec![0u8; 4096 + 100]).unwrap();
        let disk = DiskImage::open(&path, false).unwrap();
        assert_eq!(disk.sectors(), 8);
        assert!(!disk.read_only());
        assert_ne!(disk.serial(), &[0u8; SERIAL_LEN]);
        assert_eq!(
            DiskImage::open(&path, true).unwrap().serial(),
            disk.serial()
        );
    }
}
