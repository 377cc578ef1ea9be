//! The KVM VM: memory slots, the in-kernel interrupt controllers and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    Tss(kvm_ioctls::Error),
    #[error("cannot create the in-kernel IRQ chip: {0}")]
    IrqChip(kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM: {0}")]
    Memory(kvm_ioctls::Error),
    #[error("cannot read supported CPUID from KVM: {0}")]
    Cpuid(kvm_ioctls::Error),
}

/// Creates the VM with an in-kernel PIC/IOAPIC/LAPIC and PIT, and maps `mem`.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(VmError::Create)?;
    vm.set_tss_address(KVM_TSS_ADDRESS).map_err(VmError::Tss)?;
    vm.create_irq_chip().map_err(VmError::IrqChip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(VmError::Pit)?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        let mr = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the VMM
        // keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(mr) }.map_err(VmError::Memory)?;
    }
    Ok(vm)
}
