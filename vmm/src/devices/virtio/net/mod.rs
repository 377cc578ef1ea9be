//! virtio-net (device ID 1) in userspace on a host TAP.

pub mod tap;

pub use tap::{Offloads, Tap, TapError, VNET_HDR_LEN};
