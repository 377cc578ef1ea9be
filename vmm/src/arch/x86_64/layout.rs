//! The guest-physical memory map. Low addresses follow the Linux x86 boot
//! protocol conventions (the same ones Firecracker uses), so a reader of the
//! kernel's Documentation/x86/boot.rst recognises them.

/// The GDT the boot vCPU starts with.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`) handed to the kernel in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the first GiB: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux 6.1's x86 COMMAND_LINE_SIZE, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: RAM ends here in the e820 map and
/// the MP table lives here, where the kernel scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// The kernel must be loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (up to 4 GiB): no RAM there.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where virtio-mmio devices are placed, one 4 KiB window each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Local APIC and IOAPIC register windows.
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// KVM needs three pages for the TSS just below the IOAPIC/LAPIC area.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The IOAPIC has 24 pins; legacy IRQs 0-15 keep their ISA meaning.
pub const IRQ_MAX: u32 = 23;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
