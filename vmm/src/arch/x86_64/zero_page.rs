//! The zero page (`struct boot_params`): the e820 memory map, the command
//! line and the initrd, as the Linux x86 boot protocol hands them over.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// The zero page's e820 table has 128 slots.
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    #[error("too many e820 entries ({0})")]
    TooManyE820Entries(usize),
    #[error("cannot write the zero page: {0}")]
    Write(linux_loader::configurator::Error),
}

/// An initrd already placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub address: GuestAddress,
    pub size: u64,
}

/// The e820 RAM ranges for `mem_size` bytes of guest RAM laid out around
/// the MMIO gap, as (start, length).
pub fn e820_ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    let mut ranges = vec![(0, EBDA_START)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        ranges.push((HIMEM_START, low_end - HIMEM_START));
    }
    if mem_size > MMIO_GAP_START {
        ranges.push((MMIO_GAP_END, mem_size - MMIO_GAP_START));
    }
    ranges
}

/// Builds `boot_params` for a kernel loaded by the 64-bit boot protocol.
pub fn build_boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let ranges = e820_ram_ranges(mem_size);
    if ranges.len() > E820_MAX_ENTRIES {
        return Err(ZeroPageError::TooManyE820Entries(ranges.len()));
    }
    for (i, (addr, size)) in ranges.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = ranges.len() as u8;
    Ok(params)
}

pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), ZeroPageError> {
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(ZeroPageError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_small_memory() {
        assert_eq!(
            e820_ram_ranges(128 << 20),
            vec![(0, EBDA_START), (HIMEM_START, (128 << 20) - HIMEM_START)]
        );
    }

    #[test]
    fn e820_skips_mmio_gap() {
        let r = e820_ram_ranges(4 << 30);
        assert_eq!(r[1], (HIMEM_START, MMIO_GAP_START - HIMEM_START));
        assert_eq!(r[2], (MMIO_GAP_END, (4u64 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn header_fields() {
        let initrd = InitrdPlacement {
            address: GuestAddress(0x700_0000),
            size: 0x1234,
        };
        let p = build_boot_params(128 << 20, 42, Some(initrd)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.e820_table[1].r#type }, E820_RAM);
    }

    #[test]
    fn written_at_zero_page() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let p = build_boot_params(0x10_0000, 1, None).unwrap();
        write_boot_params(&mem, &p).unwrap();
        use vm_memory::Bytes;
        let magic: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        assert_eq!(magic, 0xaa55);
    }
}
