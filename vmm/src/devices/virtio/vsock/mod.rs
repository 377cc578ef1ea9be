//! virtio-vsock, host side: Firecracker's hybrid vsock over Unix sockets.
//!
//! - The guest connects to CID 2 port P: the device connects to the Unix
//!   socket `PATH_P` and answers RESPONSE, or RST if nobody listens there.
//! - A host program connects to the Unix socket `PATH` and writes
//!   `CONNECT <port>\n`: the device asks the guest's port for a connection
//!   from a fresh host port H and, once the guest accepts, writes `OK H\n`.
//!   If the guest refuses, the Unix stream is closed.
//!
//! After that, bytes flow both ways with virtio-vsock credit flow control and
//! half-close via SHUTDOWN.

mod connection;
mod device;
mod event_handler;
mod host_connect;
mod muxer;
pub mod packet;
pub mod persist;
mod tx_buf;

pub use device::{Vsock, VsockError, DEFAULT_GUEST_CID, VSOCK_QUEUE_SIZE};
/// For fuzz/: the muxer parses every header the guest sends.
#[cfg(feature = "fuzzing")]
pub use muxer::Muxer;
pub use muxer::MAX_CONNECTIONS;
pub use persist::VsockState;

#[cfg(test)]
mod tests;
