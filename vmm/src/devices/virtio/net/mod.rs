//! virtio-net (device ID 1) in userspace on a host TAP.
//!
//! - [`tap`]: the host end, a TAP carrying frames behind virtio-net
//!   headers, so offloads pass between the guest and the host kernel.
//! - `buffers`, `rx`, `tx`: the descriptor logic, where guest input is
//!   checked; `device`: the device and its queues; `event_handler`: when
//!   each runs; [`persist`]: snapshots.

mod buffers;
mod device;
mod event_handler;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod log_limit;
pub mod persist;
mod rx;
pub mod tap;
mod tx;

#[cfg(test)]
pub(crate) mod tests;

pub use buffers::{ChainError, MAX_FRAME_LEN};
pub(crate) use device::clone_tap;
pub use device::{format_mac, Net, NetError, NetStats, NET_QUEUE_SIZE};
pub use persist::NetState;
pub use tap::{Offloads, Tap, TapError, VNET_HDR_LEN};
