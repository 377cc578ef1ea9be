//! Model-specific registers every vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const MISC_ENABLE_FAST_STRING: u64 = 0x1;
/// MTRRs enabled, default memory type write-back: without it the kernel
/// maps all RAM uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 0x6;

#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("cannot build the MSR list: {0}")]
    Build(vmm_sys_util::fam::Error),
    #[error("KVM_SET_MSRS failed: {0}")]
    Set(kvm_ioctls::Error),
}

/// The MSR values a vCPU boots with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Sets the boot MSRs; returns how many KVM accepted. Hosts differ in which
/// MSRs they virtualise, and none of these is fatal to a Linux guest.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<usize, MsrError> {
    let msrs = Msrs::from_entries(&boot_msr_entries()).map_err(MsrError::Build)?;
    vcpu.set_msrs(&msrs).map_err(MsrError::Set)
}
