//! The bulkhead VMM: boots a Linux guest on KVM with a minimal device model.
//!
//! [`builder::build`] turns a [`config::VmConfig`] into a [`vmm::Vmm`],
//! [`builder::restore`] turns a snapshot into one; [`vmm::Vmm::run`] runs
//! it until the guest shuts down or it is snapshotted ([`snapshot`]).

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod seccomp;
pub mod snapshot;
pub mod vmm;
pub mod vstate;
