//! Guest RAM laid out around the 32-bit MMIO gap: anonymous host mappings,
//! or one memfd mapped shared when a vhost-user backend (virtiofsd) must
//! map the same pages.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Map(u64, vm_memory::mmap::FromRangesError),
    #[error("cannot create a shareable memory file of {0} MiB for guest memory: {1}")]
    Memfd(u64, #[source] io::Error),
    #[error("cannot map the shareable guest memory file: {0}")]
    MapShared(#[source] MapFileError),
}

/// The (guest address, size) regions for `size` bytes of RAM.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_regions(size)).map_err(|e| MemoryError::Map(size >> 20, e))
}

/// Guest RAM in one memfd, each region mapped `MAP_SHARED` at its offset,
/// so its file descriptor can be handed to a vhost-user backend. Every
/// region carries its [`FileOffset`], which is what the backend is told.
pub fn create_shared_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let file = memfd(size).map_err(|e| MemoryError::Memfd(size >> 20, e))?;
    map_file(&file, size, libc::MAP_SHARED).map_err(MemoryError::MapShared)
}

/// Why a file could not be mapped as guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MapFileError {
    #[error("cannot duplicate its descriptor: {0}")]
    Dup(#[source] io::Error),
    #[error(transparent)]
    Map(#[from] vm_memory::mmap::MmapRegionError),
    #[error("cannot lay out guest memory: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
}

/// Maps `size` bytes of `file` as guest RAM laid out by [`ram_regions`],
/// each region at its own offset of the file and carrying its
/// [`FileOffset`]; `flags` is `MAP_SHARED` or `MAP_PRIVATE`.
pub fn map_file(file: &File, size: u64, flags: i32) -> Result<GuestMemoryMmap, MapFileError> {
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_regions(size) {
        let fd = file.try_clone().map_err(MapFileError::Dup)?;
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags | libc::MAP_NORESERVE)
            .build()?;
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or(vm_memory::GuestRegionCollectionError::NoMemoryRegion)?;
        regions.push(region);
        offset += len as u64;
    }
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

/// An anonymous memory file of `size` bytes, all holes until touched.
fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; the call only
    // creates a new descriptor, checked below.
    let fd = unsafe { libc::memfd_create(c"bulkhead-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn splits_around_gap() {
        assert_eq!(ram_regions(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
    }

    #[test]
    fn shared_memory_is_one_file_seen_through_its_fd() {
        use std::os::unix::fs::FileExt;
        let mem = create_shared_guest_memory(8 << 20).unwrap();
        mem.write_obj(0xfeed_u32, GuestAddress(0x2000)).unwrap();
        let region = mem.iter().next().unwrap();
        let fo = region
            .file_offset()
            .expect("shared regions carry their file");
        let mut b = [0u8; 4];
        // What a backend mapping the fd sees is what the guest wrote.
        fo.file()
            .read_exact_at(&mut b, fo.start() + 0x2000)
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xfeed);
        assert!(create_guest_memory(8 << 20)
            .unwrap()
            .iter()
            .all(|r| r.file_offset().is_none()));
    }
}
