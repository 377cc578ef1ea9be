//! Register state of the boot vCPU: 64-bit long mode with paging on, the way
//! the kernel's `startup_64` expects to be entered (boot protocol 2.x, 64-bit).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{kvm_segment_from_gdt, BOOT_GDT};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};
use super::paging::write_identity_tables;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables into guest memory failed.
    #[error("cannot write boot tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
}

/// General-purpose registers at the kernel's entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        // The 64-bit boot protocol passes the zero page in RSI.
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Fills in segment, descriptor-table and control registers for long mode.
/// Writes the GDT, an empty IDT and the identity page tables into memory.
pub fn configure_sregs(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;

    let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
    let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
    let tss = kvm_segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = write_identity_tables(mem)?;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// The x87/SSE control words a freshly reset CPU would have.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Puts the boot vCPU at the kernel's 64-bit entry point.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: u64) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    configure_sregs(mem, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(RegsError::SetRegs)?;
    Ok(())
}

/// FPU state every vCPU starts with.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_sregs() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut sregs = kvm_sregs::default();
        configure_sregs(&mem, &mut sregs).unwrap();
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.gdt.limit, 31);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn entry_regs_point_at_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
    }
}
