//! Identity page tables for the first GiB: the kernel's 64-bit entry point
//! runs with paging on and builds its own tables from there.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes PML4 → PDPT → PD with 512 2-MiB pages and returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PAGE_SIZE_2M | PRESENT_RW,
            GuestAddress(PDE_START + i * 8),
        )?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_first_gib_with_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_identity_tables(&mem).is_err());
    }
}
