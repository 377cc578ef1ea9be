//! The bulkhead VMM: boots a Linux guest on KVM with a minimal device model.
//!
//! [`builder::build`] turns a [`config::VmConfig`] into a [`vmm::Vmm`];
//! [`vmm::Vmm::run`] runs it until the guest shuts down.

pub mod arch;
pub mod boot;
pub mod builder;
pub mod config;
pub mod devices;
pub mod vmm;
pub mod vstate;
