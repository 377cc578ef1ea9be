//! virtio-blk backed by a raw image file (virtio 1.x section 5.2).

mod device;
mod disk;
mod event_handler;
pub mod persist;
pub mod request;
#[cfg(test)]
pub(crate) mod test_utils;

pub use device::{Block, BLOCK_QUEUE_SIZE};
pub use disk::{BlockError, DiskImage};
pub use persist::{BackingState, BlockState};
