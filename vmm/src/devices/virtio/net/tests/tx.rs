//! The transmit path and the device as the driver probes it, on an empty
//! slot (no TAP): the guest sees a NIC, its frames are consumed and
//! dropped, hostile chains are refused without harm.

use virtio_queue::QueueT;

use super::rig::{test_frame, with_header, Rig, MAC};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::net::device::{FEATURES, F_MAC, F_MRG_RXBUF, F_STATUS};
use crate::devices::virtio::net::{Net, NetError, NetStats, MAX_FRAME_LEN};
use crate::devices::virtio::test_utils::{mmio_read, Desc};

#[test]
fn an_empty_slot_probes_as_a_nic() {
    let mut rig = Rig::new(Net::new(None, MAC).unwrap());
    assert_eq!(mmio_read(&mut rig.transport, 0x08), 1);
    let dev = rig.dev.lock().unwrap();
    assert_eq!(dev.avail_features(), FEATURES);
    assert_ne!(dev.acked_features() & (F_MAC | F_STATUS | F_MRG_RXBUF), 0);
    assert_eq!(dev.queues().len(), 2);
    assert_eq!(dev.queues()[0].max_size(), 256);
    drop(dev);
    // mac, then status: VIRTIO_NET_S_LINK_UP.
    assert_eq!(rig.config(), [2, 0xb4, 0, 0, 0, 1, 1, 0]);
    // Config space is read-only.
    rig.dev.lock().unwrap().write_config(0, &[0xff; 6]);
    assert_eq!(rig.config()[..6], MAC);
}

#[test]
fn an_empty_slot_consumes_and_drops_tx_frames() {
    let mut rig = Rig::new(Net::new(None, MAC).unwrap());
    let frame = with_header(&test_frame(100, 1));
    let d = rig.readable(&frame);
    assert_eq!(rig.send(&[d]), 0);
    let stats = rig.dev.lock().unwrap().stats();
    assert_eq!(
        stats,
        NetStats {
            tx_dropped: 1,
            ..Default::default()
        }
    );
    // The driver is told its buffer is free.
    let irq = rig.dev.lock().unwrap().core.irq.status();
    assert_eq!(irq.load(std::sync::atomic::Ordering::SeqCst) & 1, 1);
}

#[test]
fn hostile_tx_chains_are_refused_and_returned() {
    let mut rig = Rig::new(Net::new(None, MAC).unwrap());
    let frame = with_header(&test_frame(100, 2));
    let good = rig.readable(&frame);
    let short = rig.readable(&[0u8; 8]);
    let big = rig.alloc(MAX_FRAME_LEN as u32);
    let chains: Vec<Vec<Desc>> = vec![
        // A device-writable descriptor.
        vec![good, Desc::w(good.addr, 16)],
        // Header shorter than 12 bytes.
        vec![short],
        // Outside guest memory, and running off its end.
        vec![Desc::r(0x10_0000_0000, 100)],
        vec![Desc::r((16 << 20) - 10, 100)],
        // Longer than a frame can be.
        vec![Desc::r(big, MAX_FRAME_LEN as u32), Desc::r(good.addr, 1)],
        vec![Desc::r(big, u32::MAX)],
    ];
    for chain in &chains {
        assert_eq!(rig.send(chain), 0);
    }
    // A descriptor loop: cut off after a queue's worth, then too long.
    let head = 30;
    rig.txq.write_desc(&rig.mem, head, big, 4096, 1, head + 1);
    rig.txq.write_desc(&rig.mem, head + 1, big, 4096, 1, head);
    rig.txq.publish(&rig.mem, head);
    rig.kick(1);
    assert_eq!(rig.txq.next_used(&rig.mem), Some((u32::from(head), 0)));
    let stats = rig.dev.lock().unwrap().stats();
    assert_eq!(stats.bad_chains, chains.len() as u64 + 1);
    assert_eq!(stats.tx_dropped, 0);
    // The queue still works.
    assert_eq!(rig.send(&[good]), 0);
    assert_eq!(rig.dev.lock().unwrap().stats().tx_dropped, 1);
}

#[test]
fn a_multicast_or_zero_mac_is_refused() {
    let err = Net::new(None, [0x03, 0, 0, 0, 0, 1]).unwrap_err();
    assert!(matches!(err, NetError::InvalidMac(_)), "{err}");
    assert!(err.to_string().contains("03:00:00:00:00:01"), "{err}");
    assert!(Net::new(None, [0; 6]).is_err());
}
