//! The KVM objects: the KVM handle, the VM, guest memory and the vCPUs.

pub mod kvm;
pub mod memory;
pub mod persist;
pub mod vcpu;
pub mod vm;
