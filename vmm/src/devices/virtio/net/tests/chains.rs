//! The receive path's descriptor logic against guest memory: mergeable
//! buffers, whole-frame buffers, waiting for buffers, hostile chains.

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::rig::{test_frame, with_header, Rig, MAC, QUEUE_LEN};
use crate::devices::virtio::net::device::{F_MRG_RXBUF, RXQ};
use crate::devices::virtio::net::rx::{Delivery, DropReason};
use crate::devices::virtio::net::{ChainError, Net, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::Desc;

fn rig() -> Rig {
    Rig::new(Net::new(None, MAC).unwrap())
}

fn next_avail(rig: &Rig) -> u16 {
    rig.dev.lock().unwrap().core.queues[RXQ].next_avail()
}

/// The frame as the guest should see it: `num_buffers` filled in.
fn expected(frame: &[u8], buffers: u16) -> Vec<u8> {
    let mut e = frame.to_vec();
    e[10..12].copy_from_slice(&buffers.to_le_bytes());
    e
}

#[test]
fn a_gso_sized_frame_spreads_over_mergeable_buffers() {
    let mut rig = rig();
    rig.post_rx(20, 4096);
    let mut frame = with_header(&test_frame(MAX_FRAME_LEN - VNET_HDR_LEN, 1));
    let (got, bad) = rig.deliver(&mut frame, true);
    // 65562 bytes: 16 full pages and 26 bytes in a 17th.
    assert_eq!(got.unwrap(), Delivery::Delivered { buffers: 17 });
    assert!(bad.is_empty());
    assert_eq!(rig.received(), vec![expected(&frame, 17)]);
    // The three left over take the next frame.
    assert_eq!(next_avail(&rig), 17);
}

#[test]
fn a_frame_fills_a_multi_descriptor_buffer_in_order() {
    let mut rig = rig();
    let (a, b) = (rig.alloc(12), rig.alloc(100));
    rig.rxq
        .add_chain(&rig.mem, &[Desc::w(a, 12), Desc::w(b, 100)]);
    let mut frame = with_header(&test_frame(60, 2));
    assert_eq!(
        rig.deliver(&mut frame, true).0.unwrap(),
        Delivery::Delivered { buffers: 1 }
    );
    assert_eq!(rig.rxq.next_used(&rig.mem), Some((0, 72)));
    let mut got = vec![0u8; 72];
    rig.mem.read_slice(&mut got[..12], GuestAddress(a)).unwrap();
    rig.mem.read_slice(&mut got[12..], GuestAddress(b)).unwrap();
    assert_eq!(got, expected(&frame, 1));
}

#[test]
fn a_frame_waits_for_enough_buffers_without_using_any() {
    let mut rig = rig();
    rig.post_rx(2, 4096);
    let mut frame = with_header(&test_frame(20_000, 3));
    assert_eq!(
        rig.deliver(&mut frame, true).0.unwrap(),
        Delivery::NoBuffers
    );
    // Nothing used, both buffers back in the avail ring...
    assert_eq!(rig.rxq.used_idx(&rig.mem), 0);
    assert_eq!(next_avail(&rig), 0);
    // ...and (EVENT_IDX) the driver asked to kick once it posts past them.
    let avail_event = rig.rxq.used.raw_value() + 4 + 8 * u64::from(QUEUE_LEN);
    let ev: u16 = rig.mem.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(ev, 2);
    rig.post_rx(3, 4096);
    assert_eq!(
        rig.deliver(&mut frame, true).0.unwrap(),
        Delivery::Delivered { buffers: 5 }
    );
    assert_eq!(rig.received(), vec![expected(&frame, 5)]);
}

#[test]
fn without_mrg_rxbuf_a_buffer_holds_a_whole_frame() {
    let mut rig = Rig::declining(Net::new(None, MAC).unwrap(), F_MRG_RXBUF);
    assert_eq!(rig.dev.lock().unwrap().core.acked_features & F_MRG_RXBUF, 0);
    rig.post_rx(1, 1526);
    // Too big for it: the frame goes, the buffer stays for the next one.
    let mut big = with_header(&test_frame(2000, 4));
    assert_eq!(
        rig.deliver(&mut big, false).0.unwrap(),
        Delivery::Dropped(DropReason::BufferTooSmall {
            frame: 2012,
            buffer: 1526
        })
    );
    assert_eq!(next_avail(&rig), 0);
    assert_eq!(rig.rxq.used_idx(&rig.mem), 0);
    let mut small = with_header(&test_frame(1000, 5));
    assert_eq!(
        rig.deliver(&mut small, false).0.unwrap(),
        Delivery::Delivered { buffers: 1 }
    );
    assert_eq!(rig.received(), vec![expected(&small, 1)]);
}

#[test]
fn broken_buffers_go_back_empty() {
    let mut rig = rig();
    let ok = rig.alloc(4096);
    let short = rig.alloc(8);
    rig.rxq.add_chain(&rig.mem, &[Desc::r(ok, 4096)]); // 0: device-readable
    rig.rxq
        .add_chain(&rig.mem, &[Desc::w(0x10_0000_0000, 4096)]); // 1: outside memory
    rig.rxq
        .add_chain(&rig.mem, &[Desc::w((16 << 20) - 100, 4096)]); // 2: runs off the end
    rig.rxq.add_chain(&rig.mem, &[Desc::w(short, 8)]); // 3: cannot hold a header
    rig.rxq
        .add_chain(&rig.mem, &[Desc::w(ok, 100), Desc::r(ok, 100)]); // 4: mixed
    rig.post_rx(1, 4096); // 6: fine
    let mut frame = with_header(&test_frame(100, 6));
    let (got, bad) = rig.deliver(&mut frame, true);
    assert_eq!(got.unwrap(), Delivery::Delivered { buffers: 1 });
    assert_eq!(
        bad,
        vec![
            ChainError::ReadableInRx,
            ChainError::OutOfRange {
                addr: 0x10_0000_0000,
                len: 4096
            },
            ChainError::OutOfRange {
                addr: (16 << 20) - 100,
                len: 4096
            },
            ChainError::TooShort(8),
            ChainError::ReadableInRx,
        ]
    );
    for head in [0, 1, 2, 3, 4] {
        assert_eq!(rig.rxq.next_used(&rig.mem), Some((head, 0)));
    }
    assert_eq!(rig.rxq.next_used(&rig.mem), Some((6, 112)));
}

#[test]
fn a_broken_buffer_among_a_frames_costs_the_frame() {
    let mut rig = rig();
    rig.post_rx(1, 4096);
    rig.rxq
        .add_chain(&rig.mem, &[Desc::w(0x10_0000_0000, 4096)]);
    rig.post_rx(2, 4096);
    let mut frame = with_header(&test_frame(6000, 7));
    let (got, bad) = rig.deliver(&mut frame, true);
    assert_eq!(got.unwrap(), Delivery::Dropped(DropReason::BadBuffer));
    assert_eq!(bad.len(), 1);
    // Both went back empty, consecutively; the rest are untouched.
    assert_eq!(rig.rxq.next_used(&rig.mem), Some((0, 0)));
    assert_eq!(rig.rxq.next_used(&rig.mem), Some((1, 0)));
    assert_eq!(rig.rxq.next_used(&rig.mem), None);
    assert_eq!(
        rig.deliver(&mut frame, true).0.unwrap(),
        Delivery::Delivered { buffers: 2 }
    );
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped() {
    let mut rig = rig();
    rig.post_rx(usize::from(QUEUE_LEN), 64);
    let mut frame = with_header(&test_frame(4000, 8));
    assert_eq!(
        rig.deliver(&mut frame, true).0.unwrap(),
        Delivery::Dropped(DropReason::RingTooSmall {
            frame: 4012,
            capacity: 64 * usize::from(QUEUE_LEN)
        })
    );
    // The buffers stay for frames that fit.
    assert_eq!(next_avail(&rig), 0);
    let mut small = with_header(&test_frame(100, 9));
    assert_eq!(
        rig.deliver(&mut small, true).0.unwrap(),
        Delivery::Delivered { buffers: 2 }
    );
}

#[test]
fn descriptor_loops_and_bad_links_end_the_chain() {
    let mut rig = rig();
    let buf = rig.alloc(4096);
    // 0 -> 1 -> 0 ...: cut off after a queue's worth of descriptors,
    // capacity counted no further than a frame.
    rig.rxq.write_desc(&rig.mem, 0, buf, 4096, 1 | 2, 1);
    rig.rxq.write_desc(&rig.mem, 1, buf, 4096, 1 | 2, 0);
    rig.rxq.publish(&rig.mem, 0);
    // 2 -> 999: the chain ends at the bad index.
    rig.rxq.write_desc(&rig.mem, 2, buf, 4096, 1 | 2, 999);
    rig.rxq.publish(&rig.mem, 2);
    let mut frame = with_header(&test_frame(5000, 10));
    assert_eq!(
        rig.deliver(&mut frame, true).0.unwrap(),
        Delivery::Delivered { buffers: 1 }
    );
    assert_eq!(rig.rxq.next_used(&rig.mem), Some((0, 5012)));
    let mut small = with_header(&test_frame(1000, 10));
    assert_eq!(
        rig.deliver(&mut small, true).0.unwrap(),
        Delivery::Delivered { buffers: 1 }
    );
    assert_eq!(rig.rxq.next_used(&rig.mem), Some((2, 1012)));
}

#[test]
fn a_garbage_avail_index_is_an_error_not_a_hang() {
    let mut rig = rig();
    rig.rxq.set_avail_idx(&rig.mem, 1000);
    let mut frame = with_header(&test_frame(100, 11));
    assert!(rig.deliver(&mut frame, true).0.is_err());
    assert_eq!(rig.rxq.used_idx(&rig.mem), 0);
}
