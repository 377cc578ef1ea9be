//! Snapshots of the net device: saved through JSON, restored on a copy
//! of guest memory with a new TAP (or none) and a new MAC; the driver's
//! queues carry on where they were.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::host::{in_new_netns, link_up, PacketSocket};
use super::rig::{test_frame, with_header, Rig, MAC};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::device::RXQ;
use crate::devices::virtio::net::{Net, NetState, Tap};
use crate::devices::virtio::persist::{MmioTransportState, RestoreError};
use crate::devices::virtio::test_utils::{copy_memory, mmio_read, round_trip};

const NEW_MAC: [u8; 6] = [0x02, 0xb4, 0, 0, 0, 0x42];
const CONFIG_GENERATION: u64 = 0xfc;

/// Saves `rig`'s device and transport through JSON and rebuilds them on a
/// copy of guest memory with `tap` and `mac`, as a restore does.
fn restore(rig: Rig, tap: Option<Tap>, mac: [u8; 6]) -> Rig {
    let state: NetState = round_trip(&rig.dev.lock().unwrap().save());
    let regs: MmioTransportState = round_trip(&rig.transport.save());
    let mem = copy_memory(&rig.mem);
    let dev = Arc::new(Mutex::new(Net::restore(&state, tap, mac, &mem).unwrap()));
    let transport = MmioTransport::restore(mem.clone(), dev.clone(), &regs).unwrap();
    let mut rig = rig.rebuilt(mem, dev, transport);
    // The activation event: queues (and the TAP) are watched again.
    assert_eq!(rig.run(1000), 1);
    rig
}

#[test]
fn an_empty_slot_restored_with_a_tap_and_a_new_mac() {
    in_new_netns(|| {
        let mut rig = Rig::new(Net::new(None, MAC).unwrap());
        // Buffers the guest posted before the snapshot.
        rig.post_rx(4, 2048);
        rig.kick(RXQ);
        let saved = rig.dev.lock().unwrap().save();
        assert_eq!((saved.mac, saved.tap.clone()), (MAC, None));
        assert!(saved.core.activated);

        let tap = Tap::open("bhsnap0").unwrap();
        link_up("bhsnap0", None);
        let sock = PacketSocket::bind("bhsnap0");
        let mut rig = restore(rig, Some(tap), NEW_MAC);
        assert_eq!(rig.config()[..6], NEW_MAC);
        assert_eq!(mmio_read(&mut rig.transport, CONFIG_GENERATION), 1);
        assert_eq!(mmio_read(&mut rig.transport, 0x70) & 4, 4);
        assert!(rig.dev.lock().unwrap().tap_watched);

        // Out through the new TAP...
        let out = test_frame(200, 1);
        let d = rig.readable(&with_header(&out));
        assert_eq!(rig.send(&[d]), 0);
        assert_eq!(sock.recv(Duration::from_secs(5)), Some(out));
        // ...and in, into the buffers posted before the snapshot.
        let inbound = test_frame(300, 2);
        sock.send(&inbound);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.is_empty() {
            assert!(std::time::Instant::now() < deadline, "nothing received");
            rig.run(100);
            got.extend(rig.received_test_frames());
        }
        assert_eq!(got, vec![inbound]);
        let saved = rig.dev.lock().unwrap().save();
        assert_eq!(saved.tap.as_deref(), Some("bhsnap0"));
    });
}

#[test]
fn a_restore_without_a_tap_keeps_the_slot_empty() {
    let rig = Rig::new(Net::new(None, MAC).unwrap());
    let mut rig = restore(rig, None, MAC);
    assert_eq!(rig.config()[..6], MAC);
    assert_eq!(mmio_read(&mut rig.transport, CONFIG_GENERATION), 0);
    let d = rig.readable(&with_header(&test_frame(100, 3)));
    assert_eq!(rig.send(&[d]), 0);
    assert_eq!(rig.dev.lock().unwrap().stats().tx_dropped, 1);
}

#[test]
fn an_inactive_device_restores_inactive() {
    let net = Net::new(None, MAC).unwrap();
    let state = round_trip(&net.save());
    assert!(!state.core.activated);
    let mem = copy_memory(&crate::devices::virtio::test_utils::guest_memory());
    let restored = Net::restore(&state, None, NEW_MAC, &mem).unwrap();
    assert!(!restored.is_activated());
    assert!(restored.core.activate_evt.read().is_err());
}

#[test]
fn corrupt_state_and_bad_macs_are_errors_naming_the_device() {
    let rig = Rig::new(Net::new(None, MAC).unwrap());
    let good = rig.dev.lock().unwrap().save();
    let mem = copy_memory(&rig.mem);
    let mut bad = good.clone();
    bad.core.queues[1].max_size = 1024;
    let err = Net::restore(&bad, None, MAC, &mem).unwrap_err();
    assert!(
        matches!(err, RestoreError::QueueMaxSize { index: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().starts_with("virtio-net:"), "{err}");
    let mut bad = good.clone();
    bad.core.avail_features |= 1 << 17; // CTRL_VQ: not implemented
    let err = Net::restore(&bad, None, MAC, &mem).unwrap_err();
    assert!(matches!(err, RestoreError::Features { .. }), "{err}");
    let mut bad = good.clone();
    bad.core.queues.pop();
    assert!(Net::restore(&bad, None, MAC, &mem).is_err());
    let err = Net::restore(&good, None, [0xff; 6], &mem).unwrap_err();
    assert!(err.to_string().contains("ff:ff:ff:ff:ff:ff"), "{err}");
}
