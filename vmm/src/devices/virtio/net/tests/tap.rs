//! Frames through a real TAP, in a network namespace of the test's own:
//! an AF_PACKET socket on the TAP sees what the device transmits and
//! injects what the device receives.

use std::time::{Duration, Instant};

use super::host::{in_new_netns, link_up, PacketSocket};
use super::rig::ETHERTYPE;
use super::rig::{test_frame, with_header, Rig, MAC};
use crate::devices::virtio::net::device::RXQ;
use crate::devices::virtio::net::{Net, Tap, VNET_HDR_LEN};
use crate::devices::virtio::test_utils::mmio_write;

/// A TAP called `name`, up (with `mtu`), a device on it and a packet
/// socket on its host side.
fn tap_rig(name: &str, mtu: Option<u32>) -> (Rig, PacketSocket) {
    let tap = Tap::open(name).unwrap();
    link_up(name, mtu);
    let sock = PacketSocket::bind(name);
    (Rig::new(Net::new(Some(tap), MAC).unwrap()), sock)
}

/// Turns the event loop until `done` or 5 s pass.
fn run_until(rig: &mut Rig, mut done: impl FnMut(&mut Rig) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(rig) {
        assert!(Instant::now() < deadline, "timed out");
        rig.run(100);
    }
}

#[test]
fn a_transmitted_frame_reaches_the_packet_socket() {
    in_new_netns(|| {
        let (mut rig, sock) = tap_rig("bhtx0", None);
        let frame = test_frame(300, 1);
        // As Linux sends it: the header alone, then the frame in pieces.
        let hdr = rig.readable(&[0u8; VNET_HDR_LEN]);
        let a = rig.readable(&frame[..100]);
        let b = rig.readable(&frame[100..]);
        assert_eq!(rig.send(&[hdr, a, b]), 0);
        assert_eq!(sock.recv(Duration::from_secs(5)), Some(frame));
        let stats = rig.dev.lock().unwrap().stats();
        assert_eq!((stats.tx_frames, stats.tx_bytes), (1, 300));
    });
}

#[test]
fn a_frame_from_the_packet_socket_arrives_in_rx_buffers() {
    in_new_netns(|| {
        let (mut rig, sock) = tap_rig("bhrx0", None);
        rig.post_rx(8, 2048);
        rig.kick(RXQ);
        let frame = test_frame(1000, 2);
        sock.send(&frame);
        let mut got = Vec::new();
        run_until(&mut rig, |rig| {
            got.extend(rig.received_test_frames());
            !got.is_empty()
        });
        assert_eq!(got, vec![frame]);
        assert_eq!(rig.dev.lock().unwrap().stats().rx_bytes, 1000);
    });
}

#[test]
fn a_64k_frame_from_the_tap_spreads_over_mergeable_buffers() {
    in_new_netns(|| {
        let (mut rig, sock) = tap_rig("bhgso0", Some(65_000));
        rig.post_rx(20, 4096);
        rig.kick(RXQ);
        let frame = test_frame(64_000, 3);
        sock.send(&frame);
        let mut got = Vec::new();
        run_until(&mut rig, |rig| {
            let frames = rig.received();
            got.extend(
                frames
                    .into_iter()
                    .filter(|f| f[VNET_HDR_LEN + 12..][..2] == ETHERTYPE),
            );
            !got.is_empty()
        });
        assert_eq!(got.len(), 1);
        assert_eq!(got[0][VNET_HDR_LEN..], frame);
        // 64012 bytes in 4 KiB buffers: 16 of them.
        assert_eq!(u16::from_le_bytes([got[0][10], got[0][11]]), 16);
    });
}

#[test]
fn without_rx_buffers_the_tap_is_left_alone_until_a_kick() {
    in_new_netns(|| {
        let (mut rig, sock) = tap_rig("bhwait0", None);
        let (a, b) = (test_frame(200, 4), test_frame(300, 5));
        sock.send(&a);
        // The TAP wakes the loop once; the frame has nowhere to go.
        run_until(&mut rig, |rig| rig.dev.lock().unwrap().rx_pending > 0);
        assert!(!rig.dev.lock().unwrap().tap_watched);
        sock.send(&b);
        // No spinning on a readable TAP: nothing wakes the loop now.
        assert_eq!(rig.run(300), 0);
        assert_eq!(rig.rxq.used_idx(&rig.mem), 0);
        // Buffers, and the kick that says so: both frames, in order.
        rig.post_rx(4, 2048);
        rig.kick(RXQ);
        let mut got = Vec::new();
        run_until(&mut rig, |rig| {
            got.extend(rig.received_test_frames());
            got.len() >= 2
        });
        assert_eq!(got, vec![a, b]);
        assert!(rig.dev.lock().unwrap().tap_watched);
    });
}

#[test]
fn a_reset_device_reads_no_frames() {
    in_new_netns(|| {
        let (mut rig, sock) = tap_rig("bhreset0", None);
        rig.post_rx(4, 2048);
        mmio_write(&mut rig.transport, 0x70, 0);
        // The reset's activation event takes the TAP out of the loop.
        assert_eq!(rig.run(1000), 1);
        assert!(!rig.dev.lock().unwrap().tap_watched);
        sock.send(&test_frame(200, 6));
        assert_eq!(rig.run(300), 0);
        assert_eq!(rig.transport.device_status(), 0);
        assert_eq!(rig.dev.lock().unwrap().stats().rx_frames, 0);
    });
}

#[test]
fn a_frame_the_tap_refuses_is_dropped() {
    in_new_netns(|| {
        // Never brought up: the TAP takes no frames.
        let tap = Tap::open("bhdown0").unwrap();
        let mut rig = Rig::new(Net::new(Some(tap), MAC).unwrap());
        let frame = with_header(&test_frame(100, 7));
        let d = rig.readable(&frame);
        assert_eq!(rig.send(&[d]), 0);
        assert_eq!(rig.send(&[d]), 0);
        let stats = rig.dev.lock().unwrap().stats();
        assert_eq!((stats.tx_frames, stats.tx_dropped), (0, 2));
    });
}
