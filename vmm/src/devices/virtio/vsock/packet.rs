//! virtio-vsock packet constants and the header values the muxer works with,
//! copied out of (or into) guest memory in one access each.

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

/// The host's well-known CID.
pub const HOST_CID: u64 = 2;
/// The only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload accepted from or offered to the guest in one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Size of the packet header in a descriptor.
pub const HEADER_LEN: u32 = PKT_HEADER_SIZE as u32;

/// Packet operations (virtio 1.2 section 5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags, from the sender's point of view.
pub mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
    pub const BOTH: u32 = RCV | SEND;
}

/// The header of a packet the guest sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl TxHeader {
    pub fn from_packet(pkt: &VsockPacket<'_, ()>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }
}

/// The header of a packet for the guest; the CIDs are implied (host to guest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxHeader {
    /// The host-side port.
    pub src_port: u32,
    /// The guest-side port.
    pub dst_port: u32,
    pub op: u16,
    pub flags: u32,
    /// Payload bytes already written after the header.
    pub len: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl RxHeader {
    /// The header as the 44 bytes the guest reads, all little-endian.
    pub fn to_bytes(&self, guest_cid: u64) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&HOST_CID.to_le_bytes());
        b[8..16].copy_from_slice(&guest_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_header_layout() {
        let h = RxHeader {
            src_port: 0x0102_0304,
            dst_port: 5,
            op: op::RW,
            flags: 0,
            len: 7,
            buf_alloc: 0x10,
            fwd_cnt: 0x20,
        };
        let b = h.to_bytes(3);
        assert_eq!(b[0], 2);
        assert_eq!(b[8], 3);
        assert_eq!(&b[16..20], &[4, 3, 2, 1]);
        assert_eq!(b[20], 5);
        assert_eq!(b[24], 7);
        assert_eq!(b[28], 1);
        assert_eq!(b[30], 5);
        assert_eq!(b[36], 0x10);
        assert_eq!(b[40], 0x20);
    }
}
