//! Loading the kernel ELF and the initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{HIMEM_START, MMIO_GAP_START};
use crate::arch::x86_64::zero_page::InitrdPlacement;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel image {0} does not exist")]
    KernelMissing(PathBuf),
    #[error("cannot read kernel image {0}: {1}")]
    KernelRead(PathBuf, std::io::Error),
    #[error("kernel image {0} is not an ELF file (bulkhead boots an uncompressed vmlinux, not a bzImage)")]
    KernelNotElf(PathBuf),
    #[error("cannot load kernel image {0}: {1}")]
    KernelLoad(PathBuf, linux_loader::loader::Error),
    #[error("initrd {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("cannot read initrd {0}: {1}")]
    InitrdRead(PathBuf, std::io::Error),
    #[error("guest memory is too small: the kernel ends at {kernel_end:#x} and the initrd needs {initrd_size} bytes more; give the VM more memory")]
    InitrdTooLarge { kernel_end: u64, initrd_size: u64 },
}

/// Where the kernel landed.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub end: u64,
}

fn open(
    path: &Path,
    missing: fn(PathBuf) -> LoaderError,
    read: fn(PathBuf, std::io::Error) -> LoaderError,
) -> Result<File, LoaderError> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(path.to_path_buf()),
        _ => read(path.to_path_buf(), e),
    })
}

/// Loads an ELF vmlinux; its entry point is the 64-bit `startup_64`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut file = open(path, LoaderError::KernelMissing, LoaderError::KernelRead)?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    if !is_elf {
        return Err(LoaderError::KernelNotElf(path.to_path_buf()));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| LoaderError::KernelRead(path.to_path_buf(), e))?;
    let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| LoaderError::KernelLoad(path.to_path_buf(), e))?;
    Ok(LoadedKernel {
        entry: result.kernel_load,
        end: result.kernel_end,
    })
}

/// The highest page-aligned address below 4 GiB (and below the MMIO gap)
/// where `size` bytes fit above the kernel; the kernel's own allocations
/// grow up from its end, so the initrd goes at the top of low memory.
pub fn initrd_address(mem: &GuestMemoryMmap, kernel_end: u64, size: u64) -> Option<GuestAddress> {
    let low = mem.iter().find(|r| r.start_addr().raw_value() == 0)?;
    let top = (low.start_addr().raw_value() + low.len()).min(MMIO_GAP_START);
    let start = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end.next_multiple_of(PAGE_SIZE)).then_some(GuestAddress(start))
}

/// Copies the initrd to the top of low memory.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdPlacement, LoaderError> {
    let mut file = open(path, LoaderError::InitrdMissing, LoaderError::InitrdRead)?;
    let size = file
        .metadata()
        .map_err(|e| LoaderError::InitrdRead(path.to_path_buf(), e))?
        .len();
    let address = initrd_address(mem, kernel_end, size).ok_or(LoaderError::InitrdTooLarge {
        kernel_end,
        initrd_size: size,
    })?;
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(address, &mut file, size as usize)
        .map_err(|e| {
            LoaderError::InitrdRead(path.to_path_buf(), std::io::Error::other(e.to_string()))
        })?;
    Ok(InitrdPlacement { address, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn initrd_goes_to_top_of_memory_page_aligned() {
        let m = mem(64 << 20);
        let a = initrd_address(&m, 0x200_0000, 5000).unwrap();
        assert_eq!(a.raw_value() % PAGE_SIZE, 0);
        assert!(a.raw_value() + 5000 <= 64 << 20);
        assert!(a.raw_value() >= (64 << 20) - 2 * PAGE_SIZE);
    }

    #[test]
    fn initrd_overlapping_kernel_is_refused() {
        let m = mem(16 << 20);
        assert!(initrd_address(&m, 0x80_0000, 12 << 20).is_none());
    }

    #[test]
    fn non_elf_kernel_is_named() {
        let dir = std::env::temp_dir().join(format!("bulkhead-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bzImage");
        std::fs::write(&p, b"MZ not an elf at all").unwrap();
        let err = load_kernel(&mem(16 << 20), &p).unwrap_err();
        assert!(matches!(err, LoaderError::KernelNotElf(_)), "{err}");
        let err = load_kernel(&mem(16 << 20), &dir.join("missing")).unwrap_err();
        assert!(matches!(err, LoaderError::KernelMissing(_)), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
