//! Sequences of vsock packet headers (and payloads) straight into the muxer,
//! which keys connections, credit and shutdown state on them; replies are
//! drained after each packet, as the device does. Cheaper per packet than
//! `virtio_vsock_chain`, so it reaches deeper into connection state.
//!
//! Input: records of a 44-byte little-endian `virtio_vsock_hdr` followed by
//! as many payload bytes as its `len` says (or as remain).

#![no_main]

use bulkhead_fuzz::vsock::{accept_all, uds_path};
use bulkhead_vmm::devices::virtio::vsock::packet::{TxHeader, HEADER_LEN, MAX_PKT_DATA};
use bulkhead_vmm::devices::virtio::vsock::{Muxer, DEFAULT_GUEST_CID};
use libfuzzer_sys::fuzz_target;
use vm_memory::VolatileSlice;

fn header(b: &[u8]) -> TxHeader {
    let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    TxHeader {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

fuzz_target!(|data: &[u8]| {
    drop(accept_all(b""));
    let mut muxer = Muxer::new(DEFAULT_GUEST_CID, uds_path()).unwrap();
    let mut streams = Vec::new();
    let mut rx = vec![0u8; 4096];
    let mut rest = data;
    while let Some((raw, tail)) = rest.split_at_checked(HEADER_LEN as usize) {
        let h = header(raw);
        // The device hands the muxer at most MAX_PKT_DATA bytes, and only
        // what the chain holds.
        let n = (h.len.min(MAX_PKT_DATA) as usize).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        rest = tail;
        let mut payload = payload.to_vec();
        let slice = VolatileSlice::from(&mut payload[..]);
        muxer.send_pkt(&h, (n > 0).then_some(&slice));
        streams.extend(accept_all(b"host data"));
        let rx_slice = VolatileSlice::from(&mut rx[..]);
        // Bounded like the device, which stops when the guest's buffers run out.
        for _ in 0..16 {
            if !muxer.has_pending_rx() || muxer.recv_pkt(&rx_slice).is_none() {
                break;
            }
        }
    }
});
