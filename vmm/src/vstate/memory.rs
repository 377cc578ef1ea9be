//! Guest RAM: anonymous host mappings laid out around the 32-bit MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Map(u64, vm_memory::mmap::FromRangesError),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_gap() {
        assert_eq!(ram_regions(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
    }
}
