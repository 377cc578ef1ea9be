//! x86_64 boot state: where things live in guest memory and how the boot
//! vCPU looks when the kernel's 64-bit entry point first runs.

pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
pub mod zero_page;
