//! One virtio-blk request: parsed from a descriptor chain, then executed.
//!
//! With VIRTIO_F_VERSION_1 the driver may frame a request any way it likes,
//! so the chain is treated as a byte stream: the first 16 device-readable
//! bytes are the header, the last device-writable byte is the status, and the
//! data is what lies between (readable bytes for writes, writable bytes for
//! reads). Every descriptor is checked against guest memory before use.

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions,
};

use super::disk::{DiskImage, SERIAL_LEN};
use crate::devices::virtio::queue::GuestChain;

pub const SECTOR_SIZE: u64 = 512;
const HEADER_LEN: usize = 16;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request completion codes written to the status byte.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// A guest buffer, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestKind {
    fn from(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// What is wrong with a descriptor chain.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    #[error("descriptor chain is longer than 4 GiB")]
    TooLong,
    #[error("descriptor chain has no device-writable byte for the status")]
    NoStatus,
    #[error("device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("request header needs {HEADER_LEN} device-readable bytes, the chain has {0}")]
    ShortHeader(u64),
    #[error("cannot read the request header: {0}")]
    Header(#[source] GuestMemoryError),
}

/// A chain that cannot be served, and where to report that, if anywhere.
#[derive(Debug)]
pub struct ParseFailure {
    pub error: RequestError,
    /// The status byte, when the chain has one the device may write.
    pub status: Option<GuestAddress>,
}

/// Why a well-formed request failed; reported to the guest as IOERR.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    Unaligned(u64),
    #[error("sectors {sector}+{len} bytes run past the end of the disk")]
    PastEnd { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("the block slot has no backing file")]
    NoBacking,
    #[error("disk I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write to guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

#[derive(Debug)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    pub data: Vec<Segment>,
    pub status: GuestAddress,
}

impl Request {
    pub fn parse(mem: &GuestMemoryMmap, chain: GuestChain<'_>) -> Result<Self, ParseFailure> {
        let fail = |error, status| ParseFailure { error, status };
        let mut readable = Vec::new();
        let mut writable: Vec<Segment> = Vec::new();
        let mut misordered = false;
        let mut total = 0u64;
        for desc in chain {
            if desc.len() == 0 {
                continue;
            }
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if !mem.check_range(seg.addr, seg.len as usize, Permissions::ReadWrite) {
                let error = RequestError::OutOfRange {
                    addr: seg.addr.raw_value(),
                    len: seg.len,
                };
                return Err(fail(error, None));
            }
            total += u64::from(seg.len);
            if total > u64::from(u32::MAX) {
                return Err(fail(RequestError::TooLong, None));
            }
            if desc.is_write_only() {
                writable.push(seg);
            } else {
                misordered |= !writable.is_empty();
                readable.push(seg);
            }
        }

        let status =
            take_last_byte(&mut writable).ok_or_else(|| fail(RequestError::NoStatus, None))?;
        if misordered {
            return Err(fail(RequestError::ReadableAfterWritable, Some(status)));
        }
        let mut header = [0u8; HEADER_LEN];
        let readable_len: u64 = readable.iter().map(|s| u64::from(s.len)).sum();
        if readable_len < HEADER_LEN as u64 {
            return Err(fail(RequestError::ShortHeader(readable_len), Some(status)));
        }
        let payload = split_off(&readable, HEADER_LEN as u32);
        gather(mem, &readable, &mut header)
            .map_err(|e| fail(RequestError::Header(e), Some(status)))?;

        let kind = RequestKind::from(u32::from_le_bytes(header[0..4].try_into().unwrap()));
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
        let data = match kind {
            RequestKind::Out => payload,
            RequestKind::In | RequestKind::GetId => writable,
            RequestKind::Flush | RequestKind::Unsupported(_) => Vec::new(),
        };
        Ok(Self {
            kind,
            sector,
            data,
            status,
        })
    }

    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Runs the request against `disk` and returns the status code and how
    /// many data bytes went into guest buffers.
    pub fn execute(&self, disk: &mut DiskImage, mem: &GuestMemoryMmap) -> (u8, u32) {
        self.execute_on(Some(disk), mem)
    }

    /// [`Request::execute`] on a block slot, which may have no backing: then
    /// GET_ID answers an empty serial and every I/O request fails.
    pub fn execute_on(&self, mut disk: Option<&mut DiskImage>, mem: &GuestMemoryMmap) -> (u8, u32) {
        match self.run(disk.as_deref_mut(), mem) {
            Ok(written) => (status::OK, written),
            Err(RunError::Unsupported) => (status::UNSUPP, 0),
            Err(RunError::Failed(e)) => {
                let name = disk.map_or_else(
                    || "an empty slot".to_string(),
                    |d| d.path().display().to_string(),
                );
                log::warn!("virtio-blk: {:?} request on {name} failed: {e}", self.kind);
                (status::IOERR, 0)
            }
        }
    }

    fn run(&self, disk: Option<&mut DiskImage>, mem: &GuestMemoryMmap) -> Result<u32, RunError> {
        match self.kind {
            RequestKind::In => {
                let disk = backing(disk)?;
                let offset = self.checked_offset(disk)?;
                disk.read_to_guest(mem, offset, &self.data)
                    .map_err(ExecuteError::from)?;
                // parse() capped the chain at 4 GiB.
                Ok(self.data_len() as u32)
            }
            RequestKind::Out => {
                let disk = backing(disk)?;
                if disk.read_only() {
                    return Err(ExecuteError::ReadOnly.into());
                }
                let offset = self.checked_offset(disk)?;
                disk.write_from_guest(mem, offset, &self.data)
                    .map_err(ExecuteError::from)?;
                Ok(0)
            }
            RequestKind::Flush => {
                backing(disk)?.flush().map_err(ExecuteError::from)?;
                Ok(0)
            }
            RequestKind::GetId => {
                // An empty slot still identifies itself, with an empty serial.
                let serial = disk.map_or([0; SERIAL_LEN], |d| *d.serial());
                self.write_id(&serial, mem)
            }
            RequestKind::Unsupported(_) => Err(RunError::Unsupported),
        }
    }

    /// Copies the GET_ID serial into the request's buffers.
    fn write_id(&self, mut serial: &[u8], mem: &GuestMemoryMmap) -> Result<u32, RunError> {
        let mut written = 0;
        for seg in &self.data {
            let n = serial.len().min(seg.len as usize);
            mem.write_slice(&serial[..n], seg.addr)
                .map_err(ExecuteError::from)?;
            serial = &serial[n..];
            written += n as u32;
        }
        Ok(written)
    }

    /// The byte offset of an IN/OUT request that stays inside the disk.
    fn checked_offset(&self, disk: &DiskImage) -> Result<u64, ExecuteError> {
        let len = self.data_len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(ExecuteError::Unaligned(len));
        }
        let capacity = disk.sectors() * SECTOR_SIZE;
        let end = self
            .sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|offset| offset.checked_add(len))
            .filter(|&end| end <= capacity)
            .ok_or(ExecuteError::PastEnd {
                sector: self.sector,
                len,
            })?;
        Ok(end - len)
    }
}

enum RunError {
    Unsupported,
    Failed(ExecuteError),
}

impl From<ExecuteError> for RunError {
    fn from(e: ExecuteError) -> Self {
        Self::Failed(e)
    }
}

/// The disk an I/O request needs; an empty slot has none.
fn backing(disk: Option<&mut DiskImage>) -> Result<&mut DiskImage, ExecuteError> {
    disk.ok_or(ExecuteError::NoBacking)
}

/// Removes the last byte of `segs` and returns its address.
fn take_last_byte(segs: &mut Vec<Segment>) -> Option<GuestAddress> {
    let last = segs.last_mut()?;
    // Segments are never empty, so len >= 1 here.
    last.len -= 1;
    let addr = last.addr.unchecked_add(u64::from(last.len));
    if last.len == 0 {
        segs.pop();
    }
    Some(addr)
}

/// The segments that remain after skipping the first `skip` bytes.
fn split_off(segs: &[Segment], mut skip: u32) -> Vec<Segment> {
    let mut out = Vec::new();
    for seg in segs {
        if skip >= seg.len {
            skip -= seg.len;
            continue;
        }
        out.push(Segment {
            addr: seg.addr.unchecked_add(u64::from(skip)),
            len: seg.len - skip,
        });
        skip = 0;
    }
    out
}

/// Fills `buf` from the start of `segs`.
fn gather(mem: &GuestMemoryMmap, segs: &[Segment], buf: &mut [u8]) -> Result<(), GuestMemoryError> {
    let mut filled = 0;
    for seg in segs {
        if filled == buf.len() {
            break;
        }
        let n = (buf.len() - filled).min(seg.len as usize);
        mem.read_slice(&mut buf[filled..filled + n], seg.addr)?;
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn last_byte_and_split() {
        let mut v = vec![seg(0x100, 8), seg(0x200, 1)];
        assert_eq!(take_last_byte(&mut v), Some(GuestAddress(0x200)));
        assert_eq!(v, vec![seg(0x100, 8)]);
        assert_eq!(take_last_byte(&mut v), Some(GuestAddress(0x107)));
        assert_eq!(v, vec![seg(0x100, 7)]);
        assert_eq!(take_last_byte(&mut Vec::new()), None);

        let segs = [seg(0x0, 10), seg(0x100, 10)];
        assert_eq!(split_off(&segs, 16), vec![seg(0x106, 4)]);
        assert_eq!(split_off(&segs, 10), vec![seg(0x100, 10)]);
        assert!(split_off(&segs, 20).is_empty());
    }

    #[test]
    fn kinds() {
        assert_eq!(RequestKind::from(0), RequestKind::In);
        assert_eq!(RequestKind::from(1), RequestKind::Out);
        assert_eq!(RequestKind::from(4), RequestKind::Flush);
        assert_eq!(RequestKind::from(8), RequestKind::GetId);
        assert_eq!(RequestKind::from(11), RequestKind::Unsupported(11));
    }
}
