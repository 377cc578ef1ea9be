//! The guest buffers of one descriptor chain, checked before use.
//!
//! A chain is guest input: every descriptor is checked to lie inside guest
//! memory, to point the right way (rx buffers are device-writable, tx
//! frames device-readable) and to stay within a frame's size, before a
//! byte is copied. virtio-queue already ends a chain at a bad `next`
//! index and cuts loops off after a queue's worth of descriptors.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::queue::GuestChain;

/// The largest frame, virtio-net header included: a 64 KiB GSO packet
/// behind its Ethernet header (what Firecracker and the kernel's
/// vhost-net allow too).
pub const MAX_FRAME_LEN: usize = 65562;

/// A guest buffer already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a chain cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("rx buffer has a device-readable descriptor")]
    ReadableInRx,
    #[error("tx frame has a device-writable descriptor")]
    WritableInTx,
    #[error("tx frame of more than {MAX_FRAME_LEN} bytes")]
    TooLong,
    #[error("{0}-byte buffer cannot hold the {VNET_HDR_LEN}-byte virtio-net header")]
    TooShort(usize),
    #[error("cannot read the tx frame from guest memory")]
    Memory,
}

/// Appends the device-writable buffers of an rx `chain` to `out` and
/// returns their total size. Buffers past [`MAX_FRAME_LEN`] are left out:
/// no frame can reach them.
pub(super) fn rx_buffers(
    mem: &GuestMemoryMmap,
    chain: GuestChain<'_>,
    out: &mut Vec<Segment>,
) -> Result<usize, ChainError> {
    let mut total = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::ReadableInRx);
        }
        if total >= MAX_FRAME_LEN || desc.len() == 0 {
            // Still walked, so a readable descriptor later on is refused.
            continue;
        }
        let seg = checked(mem, desc.addr(), desc.len())?;
        let usable = (seg.len as usize).min(MAX_FRAME_LEN - total);
        out.push(Segment {
            addr: seg.addr,
            len: usable as u32,
        });
        total += usable;
    }
    if total < VNET_HDR_LEN {
        return Err(ChainError::TooShort(total));
    }
    Ok(total)
}

/// Copies a tx `chain` (virtio-net header and frame) to the start of
/// `frame`, which holds [`MAX_FRAME_LEN`] bytes; returns its length.
pub(super) fn read_tx_frame(
    mem: &GuestMemoryMmap,
    chain: GuestChain<'_>,
    frame: &mut [u8],
) -> Result<usize, ChainError> {
    let limit = frame.len().min(MAX_FRAME_LEN);
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WritableInTx);
        }
        if desc.len() == 0 {
            continue;
        }
        let seg = checked(mem, desc.addr(), desc.len())?;
        let end = len + seg.len as usize;
        if end > limit {
            return Err(ChainError::TooLong);
        }
        mem.read_slice(&mut frame[len..end], seg.addr)
            .map_err(|_| ChainError::Memory)?;
        len = end;
    }
    if len < VNET_HDR_LEN {
        return Err(ChainError::TooShort(len));
    }
    Ok(len)
}

/// Writes `data` over `segs` from their start; returns the bytes written.
/// `segs` were checked when the chain was parsed, so this only falls short
/// if guest memory changed since, and then writes what it could.
pub(super) fn write_to(mem: &GuestMemoryMmap, segs: &[Segment], mut data: &[u8]) -> usize {
    let mut written = 0;
    for seg in segs {
        if data.is_empty() {
            break;
        }
        let n = data.len().min(seg.len as usize);
        if mem.write_slice(&data[..n], seg.addr).is_err() {
            break;
        }
        data = &data[n..];
        written += n;
    }
    written
}

fn checked(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> Result<Segment, ChainError> {
    let in_range = addr.checked_add(u64::from(len)).is_some()
        && mem.check_range(addr, len as usize, Permissions::ReadWrite);
    if !in_range {
        return Err(ChainError::OutOfRange {
            addr: addr.raw_value(),
            len,
        });
    }
    Ok(Segment { addr, len })
}
