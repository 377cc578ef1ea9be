//! The transmit path's descriptor logic: one tx chain (virtio-net header
//! and frame) out through the TAP.

use std::io::{self, IoSlice};

use vm_memory::GuestMemoryMmap;

use super::buffers::{read_tx_frame, ChainError};
use super::tap::Tap;
use crate::devices::virtio::queue::GuestChain;

/// Why a tx frame did not leave.
#[derive(Debug, thiserror::Error)]
pub(super) enum TxError {
    /// The guest's fault.
    #[error("dropping malformed tx frame: {0}")]
    Chain(#[from] ChainError),
    /// An empty slot: nowhere to send.
    #[error("no TAP")]
    NoTap,
    /// The TAP refused it: its queue is full (EAGAIN, ENOBUFS), the
    /// interface is down (EIO), or the frame is invalid (EINVAL).
    #[error("TAP refused a {len}-byte frame: {source}")]
    Tap { len: usize, source: io::Error },
}

/// Sends the frame in `chain` through `tap`, copied through `buf` (which
/// holds a maximal frame); returns its length, header included. Nothing is
/// retried: a frame the TAP cannot take now is dropped, as a NIC would,
/// and the guest's TCP sends it again.
pub(super) fn transmit(
    mem: &GuestMemoryMmap,
    chain: GuestChain<'_>,
    buf: &mut [u8],
    tap: Option<&Tap>,
) -> Result<usize, TxError> {
    let len = read_tx_frame(mem, chain, buf)?;
    let tap = tap.ok_or(TxError::NoTap)?;
    loop {
        match tap.write_vectored(&[IoSlice::new(&buf[..len])]) {
            Ok(_) => return Ok(len),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(TxError::Tap { len, source }),
        }
    }
}
