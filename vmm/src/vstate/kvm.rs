//! Opening /dev/kvm, with errors that say what to fix.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

pub const KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{KVM_DEVICE} does not exist: this machine has no KVM (enable virtualization, load kvm_intel/kvm_amd)")]
    Missing,
    #[error("no permission to open {KVM_DEVICE}: run as root or join the group that owns it")]
    PermissionDenied,
    #[error("cannot open {KVM_DEVICE}: {0}")]
    Open(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
}

const REQUIRED_CAPS: &[Cap] = &[
    Cap::Irqchip,
    Cap::Ioeventfd,
    Cap::Irqfd,
    Cap::UserMemory,
    Cap::SetTssAddr,
    Cap::Pit2,
    Cap::ImmediateExit,
];

/// Opens KVM and checks it can run our VMs.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    if !Path::new(KVM_DEVICE).exists() {
        return Err(KvmError::Missing);
    }
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::Missing,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    for cap in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(*cap));
        }
    }
    Ok(kvm)
}
