//! virtio-fs (virtio 1.x section 5.11) as a vhost-user frontend: the FUSE
//! server is a separate backend process (virtiofsd) that maps guest memory
//! and serves the queues itself; the VMM only presents the device (its tag
//! in config space, two queues), hands the backend the memory table, the
//! rings, the guest's kick eventfds and call eventfds whose signals the
//! event loop turns into the device's interrupt.
//!
//! A device may have no backend: a template VM carries such slots, the
//! guest probes them at boot and then never uses them before a restore
//! connects each to a fresh virtiofsd ([`Fs::restore`]) with the saved
//! ring state. The guest mounts a share only after that, so no FUSE state
//! is ever in a snapshot.

mod backend;
mod device;
mod event_handler;
pub mod persist;
#[cfg(test)]
mod tests;

pub use backend::{Backend, FsError};
pub use device::{Fs, FS_QUEUE_SIZE};
pub use persist::FsState;
