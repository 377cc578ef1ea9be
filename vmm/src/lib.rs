//! The bulkhead VMM: boots a Linux guest on KVM with a minimal device model.

pub mod devices;
