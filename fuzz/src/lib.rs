//! Helpers shared by the fuzz targets: a guest driver for virtqueue targets
//! and scratch directories for the image targets.

pub mod frames;
pub mod scratch;
pub mod virtq;
pub mod vsock;
