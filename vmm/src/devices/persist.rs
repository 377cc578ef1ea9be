//! Why a device could not be rebuilt from snapshot state.
//!
//! Snapshot files are untrusted input: every check a device would make on a
//! live driver (queue sizes, ring addresses, offered features) is repeated on
//! restore, and a failure names the device instead of panicking. Each device
//! keeps its own state structs in a `persist.rs` beside it.

use std::io;

use super::virtio::attach::AttachError;
use super::virtio::block::BlockError;
use super::virtio::device::ActivateError;
use super::virtio::fs::FsError;
use super::virtio::vsock::VsockError;

/// Why restoring device state failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The saved queue count does not match the device model.
    #[error("{device}: saved state has {saved} queues, the device has {expected}")]
    QueueCount {
        device: &'static str,
        saved: usize,
        expected: usize,
    },
    /// A saved queue claims a different maximum size than the device offers.
    #[error("{device}: saved queue {index} has max size {saved}, the device offers {expected}")]
    QueueMaxSize {
        device: &'static str,
        index: usize,
        saved: u16,
        expected: u16,
    },
    /// A saved queue fails virtio-queue's own validation (size, alignment).
    #[error("{device}: saved queue {index} is invalid: {source}")]
    Queue {
        device: &'static str,
        index: usize,
        source: virtio_queue::Error,
    },
    /// An active device's queue is not ready or its rings leave guest memory.
    #[error("{device}: saved queue {index} is not ready or its rings are outside guest memory")]
    QueueOutsideMemory { device: &'static str, index: usize },
    /// Saved feature bits the device does not implement, or acked bits it never offered.
    #[error("{device}: saved features {features:#x} are not a subset of {allowed:#x}")]
    Features {
        device: &'static str,
        features: u64,
        allowed: u64,
    },
    /// The transport and the device disagree on whether the driver finished setup.
    #[error("virtio device type {device_type}: saved as active but transport status {status:#x} lacks DRIVER_OK")]
    TransportStatus { device_type: u32, status: u32 },
    /// The restored device could not be started again.
    #[error("{device}: cannot re-activate: {source}")]
    Activate {
        device: &'static str,
        source: ActivateError,
    },
    /// Creating the device's eventfds failed.
    #[error("{device}: cannot create eventfds: {source}")]
    Setup {
        device: &'static str,
        source: io::Error,
    },
    /// The new backing file of a block slot could not be opened.
    #[error("virtio-blk: {0}")]
    Block(#[from] BlockError),
    /// The vsock could not listen on its new socket, or the CID is reserved.
    #[error("virtio-vsock: {0}")]
    Vsock(#[from] VsockError),
    /// The virtio-fs backend could not be connected or started.
    #[error("virtio-fs: {0}")]
    Fs(#[from] FsError),
    /// More virtio-fs backends were given than the snapshot has slots.
    #[error("{given} shares given but the snapshot has only {slots} virtio-fs slots")]
    TooManyShares { given: usize, slots: usize },
    /// vm-superio refused the saved UART state (an over-full receive FIFO).
    #[error("serial: {0}")]
    Serial(#[source] vm_superio::serial::Error<io::Error>),
    /// The saved MMIO window or GSI is not one of this VM layout's slots.
    #[error("saved MMIO slot {base:#x}+{len:#x} (GSI {irq}) is not a slot of the VM layout")]
    InvalidSlot { base: u64, len: u64, irq: u32 },
    /// A device at a slot failed to restore; `source` says why.
    #[error("virtio device at {base:#x}: {source}")]
    AtSlot {
        base: u64,
        source: Box<RestoreError>,
    },
    /// Re-wiring a restored device into the VM failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// More backing files were given than the template has block slots.
    #[error("{given} disks given but the snapshot has only {slots} block slots")]
    TooManyDisks { given: usize, slots: usize },
    /// The snapshot has a vsock device but the restore config has none.
    #[error("the snapshot has a vsock device but no vsock is configured")]
    MissingVsock,
    /// The restore config asks for a vsock the snapshot does not have.
    #[error("a vsock is configured but the snapshot has no vsock device")]
    UnexpectedVsock,
    /// Only one vsock device is supported.
    #[error("the snapshot has more than one vsock device")]
    DuplicateVsock,
}
