//! Guest memory as a file: written sparse at snapshot time, mapped
//! `MAP_PRIVATE` at restore so every clone of one snapshot shares its
//! pages copy-on-write and none can change the file. A VM whose memory a
//! vhost-user backend must map gets a private shareable copy instead
//! ([`restore_memory_shared`]): only the file's data extents are copied.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

const PAGE: usize = 4096;
/// Memory is copied out in chunks of this size.
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot write guest memory to {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read guest memory from the VM: {0}")]
    Guest(vm_memory::GuestMemoryError),
    #[error("cannot open guest memory file {}: {source}", .path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("guest memory file {} has {found} bytes, the snapshot needs {expected}", .path.display())]
    Size {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("cannot map guest memory file {}: {source}", .path.display())]
    Map {
        path: PathBuf,
        source: crate::vstate::memory::MapFileError,
    },
    #[error(transparent)]
    Shared(#[from] crate::vstate::memory::MemoryError),
    #[error("cannot copy guest memory from {}: {source}", .path.display())]
    Copy { path: PathBuf, source: io::Error },
}

/// Writes all of `mem` to `path`, region after region, leaving holes
/// where pages are zero (most of a freshly booted guest).
pub fn save_memory(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, MemoryFileError> {
    let write_err = |source| MemoryFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(write_err)?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(write_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        let mut done = 0usize;
        while done < len {
            let n = CHUNK.min(len - done);
            let slice = region
                .get_slice(MemoryRegionAddress(done as u64), n)
                .map_err(MemoryFileError::Guest)?;
            slice.copy_to(&mut buf[..n]);
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let at = file_offset + (done + i * PAGE) as u64;
                    file.write_all_at(page, at).map_err(write_err)?;
                }
            }
            done += n;
        }
        file_offset += len as u64;
    }
    Ok(total)
}

/// Maps into this process, read-only and still copy-on-write, every page
/// of the memory file that holds data, so the guest's first touch of a
/// page it had mapped before the snapshot finds the host page table
/// filled (on a host that is itself a VM, each of those host faults costs
/// about as much as the guest's own work on that page). Holes stay
/// unmapped: the guest never read them, and mapping them would fill the
/// page cache with zeros. `file` is the memory file `mem` was mapped
/// from. Returns how many bytes were populated.
pub fn populate_data(mem: &GuestMemoryMmap, file: &File) -> io::Result<u64> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    let mut done = 0u64;
    let mut file_start = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let base = region.as_ptr();
        let mut at = 0u64;
        while at < len {
            let Some((data, hole)) = next_extent(fd, file_start + at, file_start + len)? else {
                break;
            };
            let (from, to) = (data - file_start, hole - file_start);
            // SAFETY: [from, to) lies inside this region's live mapping
            // (both ends are clamped to the region), and MADV_POPULATE_READ
            // only faults pages in; it never changes their contents.
            let rc = unsafe {
                libc::madvise(
                    base.add(from as usize).cast(),
                    (to - from) as usize,
                    libc::MADV_POPULATE_READ,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            done += to - from;
            at = to;
        }
        file_start += len;
    }
    Ok(done)
}

/// The next data extent of `fd` at or after `from`, clamped to `end`, as
/// page-aligned (data start, hole start); `None` when only holes remain.
fn next_extent(fd: i32, from: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    // SAFETY: lseek only reads the file's extent map.
    let data = unsafe { libc::lseek(fd, from as i64, libc::SEEK_DATA) };
    if data < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    let data = (data as u64) & !(PAGE as u64 - 1);
    if data >= end {
        return Ok(None);
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
    if hole < 0 {
        return Err(io::Error::last_os_error());
    }
    let hole = (hole as u64).next_multiple_of(PAGE as u64).min(end);
    Ok(Some((data, hole)))
}

/// Opens the memory file at `path`, which must hold `size` bytes.
fn open_memory_file(path: &Path, size: u64) -> Result<File, MemoryFileError> {
    let open_err = |source| MemoryFileError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let found = file.metadata().map_err(open_err)?.len();
    if found != size {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            found,
            expected: size,
        });
    }
    Ok(file)
}

/// Guest memory of `size` bytes in a fresh shareable memfd
/// ([`create_shared_guest_memory`]) holding the data of the memory file at
/// `path`. Holes are left untouched: the memfd reads them as zeros.
pub fn restore_memory_shared(path: &Path, size: u64) -> Result<GuestMemoryMmap, MemoryFileError> {
    let file = open_memory_file(path, size)?;
    let mem = crate::vstate::memory::create_shared_guest_memory(size)?;
    let copy_err = |source| MemoryFileError::Copy {
        path: path.to_path_buf(),
        source,
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut file_start = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let mut at = 0u64;
        while let Some((data, hole)) =
            next_extent(fd, file_start + at, file_start + len).map_err(copy_err)?
        {
            let (from, to) = (data - file_start, hole - file_start);
            // SAFETY: [from, to) lies inside this region's live mapping (both
            // ends are clamped to the region), nothing else has the memfd
            // yet and no vCPU runs, so this is the only reference to it.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    region.as_ptr().add(from as usize),
                    (to - from) as usize,
                )
            };
            file.read_exact_at(dst, data).map_err(copy_err)?;
            at = to;
        }
        file_start += len;
    }
    Ok(mem)
}

/// Maps the memory file at `path` as guest memory of `size` bytes, laid
/// out as [`crate::vstate::memory::ram_regions`] lays out a fresh VM.
pub fn restore_memory(path: &Path, size: u64) -> Result<GuestMemoryMmap, MemoryFileError> {
    let file = open_memory_file(path, size)?;
    crate::vstate::memory::map_file(&file, size, libc::MAP_PRIVATE).map_err(|source| {
        MemoryFileError::Map {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn round_trip_is_private_and_sparse() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        let mem = create_guest_memory(8 << 20).unwrap();
        mem.write_obj(0xdead_beef_u64, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u32, GuestAddress((8 << 20) - 4))
            .unwrap();
        assert_eq!(save_memory(&mem, &path).unwrap(), 8 << 20);
        // Two pages of data: the rest of the file is holes.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        assert!(blocks * 512 <= 64 * 1024, "{blocks} blocks allocated");

        let a = restore_memory(&path, 8 << 20).unwrap();
        let b = restore_memory(&path, 8 << 20).unwrap();
        assert_eq!(
            a.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            a.read_obj::<u32>(GuestAddress((8 << 20) - 4)).unwrap(),
            0x1234
        );
        a.write_obj(7u64, GuestAddress(0x1000)).unwrap();
        // Copy-on-write: neither the other clone nor the file sees it.
        assert_eq!(
            b.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let c = restore_memory(&path, 8 << 20).unwrap();
        assert_eq!(
            c.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn populates_only_the_data() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        let mem = create_guest_memory(8 << 20).unwrap();
        mem.write_obj(1u8, GuestAddress(0x3000)).unwrap();
        mem.write_obj(2u8, GuestAddress(5 << 20)).unwrap();
        save_memory(&mem, &path).unwrap();
        let restored = restore_memory(&path, 8 << 20).unwrap();
        let populated = populate_data(&restored, &File::open(&path).unwrap()).unwrap();
        // Two data pages, however the filesystem rounds its extents.
        assert!((2 * 4096..=2 << 20).contains(&populated), "{populated}");
        assert_eq!(restored.read_obj::<u8>(GuestAddress(5 << 20)).unwrap(), 2);
    }

    #[test]
    fn shared_restore_copies_the_data_into_a_private_memfd() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        let mem = create_guest_memory(8 << 20).unwrap();
        mem.write_obj(0xabcd_u64, GuestAddress(0x5000)).unwrap();
        mem.write_obj(9u8, GuestAddress((8 << 20) - 1)).unwrap();
        save_memory(&mem, &path).unwrap();
        let a = restore_memory_shared(&path, 8 << 20).unwrap();
        assert_eq!(a.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xabcd);
        assert_eq!(a.read_obj::<u8>(GuestAddress((8 << 20) - 1)).unwrap(), 9);
        assert_eq!(a.read_obj::<u64>(GuestAddress(0x9000)).unwrap(), 0);
        assert!(a.iter().all(|r| r.file_offset().is_some()));
        a.write_obj(1u64, GuestAddress(0x5000)).unwrap();
        // The snapshot stays as it was for the next clone.
        let b = restore_memory_shared(&path, 8 << 20).unwrap();
        assert_eq!(b.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xabcd);
        let err = restore_memory_shared(&dir.as_path().join("missing"), 8 << 20).unwrap_err();
        assert!(matches!(err, MemoryFileError::Open { .. }), "{err}");
    }

    #[test]
    fn refuses_a_file_of_the_wrong_size() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("memory");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let err = restore_memory(&path, 8 << 20).unwrap_err();
        assert!(err.to_string().contains("has 4096 bytes"), "{err}");
        let err = restore_memory(&dir.as_path().join("missing"), 8 << 20).unwrap_err();
        assert!(matches!(err, MemoryFileError::Open { .. }), "{err}");
    }
}
