//! Emulated devices: the buses that route exits to them, the legacy PC
//! devices a Linux guest expects, and the virtio devices.

pub mod bus;
pub mod legacy;
pub mod persist;
pub mod virtio;
