//! Snapshot state of the attached virtio devices, and their restore into a
//! new VM at the slots they were saved from.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::{AttachError, AttachedDevice, AttachedDevices, DeviceEventManager, MmioSlot, Wiring};
use crate::arch::x86_64::layout::{VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::config::{DiskConfig, NetConfig, VsockConfig};
use crate::devices::bus::{lock, Bus};
use crate::devices::virtio::block::{Block, BlockState};
use crate::devices::virtio::fs::{Fs, FsState};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{clone_tap, Net, NetState};
use crate::devices::virtio::persist::{MmioTransportState, RestoreError};
use crate::devices::virtio::vsock::{Vsock, VsockState};

/// Where a device lived in the snapshot's VM layout.
pub type MmioSlotState = MmioSlot;

/// One virtio-mmio device in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmioDeviceState {
    pub slot: MmioSlotState,
    pub transport: MmioTransportState,
    pub device: DeviceState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockState),
    Fs(FsState),
    Net(NetState),
    Vsock(VsockState),
}

impl AttachedDevices {
    /// The state of every device, in slot order. The caller pauses the vCPUs
    /// and the event loop first, so nothing changes while this runs.
    pub fn save(&self) -> Vec<MmioDeviceState> {
        self.devices
            .iter()
            .map(|a| MmioDeviceState {
                slot: a.slot,
                transport: lock(&a.transport).save(),
                device: match &a.device {
                    AttachedDevice::Block(b) => DeviceState::Block(lock(b).save()),
                    AttachedDevice::Fs(f) => DeviceState::Fs(lock(f).save()),
                    AttachedDevice::Net(n) => DeviceState::Net(lock(n).save()),
                    AttachedDevice::Vsock(v) => DeviceState::Vsock(lock(v).save()),
                },
            })
            .collect()
    }
}

/// What a restore plugs into the snapshot's device slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreBackings<'a> {
    /// The new backing of each block slot, in saved order; a missing or
    /// `None` entry leaves the slot empty.
    pub disks: &'a [Option<DiskConfig>],
    /// The backend socket of each virtio-fs slot, in saved order; a
    /// missing or `None` entry leaves the slot unconnected.
    pub shares: &'a [Option<PathBuf>],
    /// The TAP (on a descriptor of its own) and MAC of the net slot;
    /// `None` leaves the slot without a TAP and with its saved MAC.
    pub net: Option<&'a NetConfig>,
    /// The vsock's new socket and CID.
    pub vsock: Option<&'a VsockConfig>,
}

/// Re-wires the devices of a snapshot, each at its saved slot (ioeventfds,
/// irqfd, bus, event loop; the guest parsed its command line long ago),
/// with `backings` in its slots. Devices the snapshot saved as active are
/// re-activated against `mem`.
pub fn restore_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut DeviceEventManager,
    states: &[MmioDeviceState],
    backings: RestoreBackings<'_>,
) -> Result<AttachedDevices, RestoreError> {
    let vsock = backings.vsock;
    check_restore_config(states, &backings)?;
    let mut wiring = Wiring::new(vm, mmio_bus, event_manager);
    let mut attached = AttachedDevices::default();
    let mut disks = backings.disks.iter();
    let mut shares = backings.shares.iter();
    // Only the first net slot gets it (the VMM makes at most one).
    let mut net = backings.net;
    for state in states {
        let slot = state.slot;
        check_slot(slot)?;
        let at_slot = |source| RestoreError::AtSlot {
            base: slot.base,
            source: Box::new(source),
        };
        let device = match &state.device {
            DeviceState::Block(saved) => {
                let disk = disks.next().and_then(Option::as_ref);
                let backing = disk.map(|d| (d.path.as_path(), d.read_only));
                let block = Block::restore(saved, backing, mem).map_err(at_slot)?;
                AttachedDevice::from(Arc::new(Mutex::new(block)))
            }
            DeviceState::Fs(saved) => {
                let socket = shares.next().and_then(Option::as_deref);
                let fs = Fs::restore(saved, socket, mem).map_err(at_slot)?;
                AttachedDevice::from(Arc::new(Mutex::new(fs)))
            }
            DeviceState::Net(saved) => {
                let (tap, mac) = match net.take() {
                    Some(cfg) => (clone_tap(cfg).map_err(net_error)?, cfg.mac),
                    None => (None, saved.mac),
                };
                let net = Net::restore(saved, tap, mac, mem).map_err(at_slot)?;
                AttachedDevice::from(Arc::new(Mutex::new(net)))
            }
            DeviceState::Vsock(saved) => {
                let cfg = vsock.ok_or(RestoreError::MissingVsock)?;
                let saved = VsockState {
                    cid: cfg.cid,
                    ..saved.clone()
                };
                let vsock = Vsock::restore(&saved, &cfg.uds_path, mem).map_err(at_slot)?;
                AttachedDevice::from(Arc::new(Mutex::new(vsock)))
            }
        };
        let transport = MmioTransport::restore(mem.clone(), device.virtio(), &state.transport)
            .map_err(at_slot)?;
        attached.add(&mut wiring, slot, device, transport)?;
    }
    Ok(attached)
}

/// Rejects a restore request that does not fit the snapshot's devices
/// before anything is opened or wired.
fn check_restore_config(
    states: &[MmioDeviceState],
    backings: &RestoreBackings<'_>,
) -> Result<(), RestoreError> {
    let count = |kind: fn(&DeviceState) -> bool| states.iter().filter(|s| kind(&s.device)).count();
    let slots = count(|d| matches!(d, DeviceState::Block(_)));
    if backings.disks.len() > slots {
        return Err(RestoreError::TooManyDisks {
            given: backings.disks.len(),
            slots,
        });
    }
    if backings.net.is_some() && count(|d| matches!(d, DeviceState::Net(_))) == 0 {
        return Err(RestoreError::Attach(AttachError::NoNetSlot));
    }
    let slots = count(|d| matches!(d, DeviceState::Fs(_)));
    if backings.shares.len() > slots {
        return Err(RestoreError::TooManyShares {
            given: backings.shares.len(),
            slots,
        });
    }
    match (
        count(|d| matches!(d, DeviceState::Vsock(_))),
        backings.vsock,
    ) {
        (0, Some(_)) => Err(RestoreError::UnexpectedVsock),
        (1, None) => Err(RestoreError::MissingVsock),
        (n, _) if n > 1 => Err(RestoreError::DuplicateVsock),
        _ => Ok(()),
    }
}

fn net_error(e: crate::devices::virtio::net::NetError) -> RestoreError {
    RestoreError::Attach(AttachError::Net(e))
}

/// A saved slot must be one this VM layout would have handed out.
fn check_slot(slot: MmioSlot) -> Result<(), RestoreError> {
    let index = slot
        .base
        .checked_sub(VIRTIO_MMIO_START)
        .map(|off| off / VIRTIO_MMIO_SIZE);
    let expected = index
        .and_then(|i| usize::try_from(i).ok())
        .and_then(MmioSlot::nth);
    if expected == Some(slot) {
        return Ok(());
    }
    Err(RestoreError::InvalidSlot {
        base: slot.base,
        len: slot.len,
        irq: slot.irq,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use linux_loader::cmdline::Cmdline;
    use vmm_sys_util::tempdir::TempDir;

    use super::super::attach_devices;
    use super::super::tests::vm;
    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;

    fn read_u32(bus: &Bus, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(bus.read(addr, &mut b));
        u32::from_le_bytes(b)
    }

    fn read_capacity(bus: &Bus, base: u64) -> u64 {
        let mut b = [0u8; 8];
        assert!(bus.read(base + 0x100, &mut b));
        u64::from_le_bytes(b)
    }

    /// A template VM: one disk, two empty slots and a vsock; its saved devices.
    fn template(vm: &VmFd, dir: &TempDir) -> Vec<MmioDeviceState> {
        let img = dir.as_path().join("root.img");
        std::fs::write(&img, vec![0u8; 8 * 512]).unwrap();
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let mut cmdline = Cmdline::new(2048).unwrap();
        let disks = [DiskConfig {
            path: img,
            read_only: true,
        }];
        let vsock = VsockConfig {
            cid: 3,
            uds_path: dir.as_path().join("t.sock"),
        };
        let devices = super::super::VirtioDevices {
            disks: &disks,
            empty_disk_slots: 2,
            vsock: Some(&vsock),
            ..Default::default()
        };
        let attached = attach_devices(vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap();
        let line = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(line.matches("virtio_mmio.device=").count(), 4);
        for i in 0..3u64 {
            assert_eq!(
                read_u32(&bus, VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE + 8),
                2
            );
        }
        assert_eq!(read_capacity(&bus, VIRTIO_MMIO_START), 8);
        assert_eq!(read_capacity(&bus, VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE), 0);
        assert_eq!(attached.len(), 4);
        let states = crate::devices::virtio::test_utils::round_trip(&attached.save());
        assert!(matches!(&states[1].device, DeviceState::Block(b) if b.backing.is_none()));
        assert!(matches!(&states[3].device, DeviceState::Vsock(v) if v.cid == 3));
        assert_eq!(states[2].slot, MmioSlot::nth(2).unwrap());
        states
    }

    /// A template VM with an empty net slot and a vsock; its saved devices.
    fn net_template(vm: &VmFd, dir: &TempDir) -> Vec<MmioDeviceState> {
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let mut cmdline = Cmdline::new(2048).unwrap();
        let net = NetConfig {
            tap: None,
            mac: [0x02, 0, 0, 0, 0, 1],
        };
        let vsock = VsockConfig {
            cid: 3,
            uds_path: dir.as_path().join("n.sock"),
        };
        let devices = super::super::VirtioDevices {
            net: Some(&net),
            vsock: Some(&vsock),
            ..Default::default()
        };
        let attached = attach_devices(vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap();
        let states = crate::devices::virtio::test_utils::round_trip(&attached.save());
        assert!(matches!(&states[0].device, DeviceState::Net(n) if n.tap.is_none()));
        states
    }

    fn read_mac(bus: &Bus, base: u64) -> [u8; 6] {
        let mut b = [0u8; 6];
        assert!(bus.read(base + 0x100, &mut b));
        b
    }

    #[test]
    fn a_net_slot_restores_with_a_tap_and_a_new_mac() {
        crate::devices::virtio::net::tests::host::in_new_netns(|| {
            let Some(vm) = vm() else { return };
            let dir = TempDir::new().unwrap();
            let states = net_template(&vm, &dir);
            let vsock = VsockConfig {
                cid: 3,
                uds_path: dir.as_path().join("r.sock"),
            };
            let restore = |net: Option<&NetConfig>| {
                let vm = self::vm().unwrap();
                let mem = guest_memory();
                let mut bus = Bus::new();
                let mut em = DeviceEventManager::new().unwrap();
                let backings = RestoreBackings {
                    net,
                    vsock: Some(&vsock),
                    ..Default::default()
                };
                let restored =
                    restore_devices(&vm, &mem, &mut bus, &mut em, &states, backings).unwrap();
                let _ = std::fs::remove_file(&vsock.uds_path);
                (read_mac(&bus, VIRTIO_MMIO_START), restored.save())
            };

            let net = NetConfig {
                tap: Some(crate::devices::virtio::net::Tap::open("bhslot0").unwrap()),
                mac: [0x02, 0, 0, 0, 0, 0x42],
            };
            let (mac, saved) = restore(Some(&net));
            assert_eq!(mac, net.mac);
            assert!(
                matches!(&saved[0].device, DeviceState::Net(n) if n.tap.as_deref() == Some("bhslot0")),
                "{saved:?}"
            );
            // The config keeps its own descriptor: a retry can use it again.
            let (mac, _) = restore(Some(&net));
            assert_eq!(mac, net.mac);

            let (mac, saved) = restore(None);
            assert_eq!(mac, [0x02, 0, 0, 0, 0, 1]);
            assert!(matches!(&saved[0].device, DeviceState::Net(n) if n.tap.is_none()));
        });
    }

    #[test]
    fn a_tap_for_a_snapshot_without_a_net_slot_is_refused() {
        let Some(vm) = vm() else { return };
        let dir = TempDir::new().unwrap();
        let states = template(&vm, &dir);
        let vm = self::vm().unwrap();
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let vsock = VsockConfig {
            cid: 3,
            uds_path: dir.as_path().join("x.sock"),
        };
        let net = NetConfig {
            tap: None,
            mac: [0x02, 0, 0, 0, 0, 1],
        };
        let backings = RestoreBackings {
            net: Some(&net),
            vsock: Some(&vsock),
            ..Default::default()
        };
        let err = restore_devices(&vm, &mem, &mut bus, &mut em, &states, backings).unwrap_err();
        assert!(
            matches!(err, RestoreError::Attach(AttachError::NoNetSlot)),
            "{err}"
        );
    }

    #[test]
    fn template_devices_restore_with_new_backings() {
        let Some(vm) = vm() else { return };
        let dir = TempDir::new().unwrap();
        let states = template(&vm, &dir);

        let vm = self::vm().unwrap();
        let data = dir.as_path().join("data.img");
        std::fs::write(&data, vec![0u8; 32 * 512]).unwrap();
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let vsock = VsockConfig {
            cid: 9,
            uds_path: dir.as_path().join("r.sock"),
        };
        let disks = [
            None,
            Some(DiskConfig {
                path: data,
                read_only: false,
            }),
        ];
        let backings = RestoreBackings {
            disks: &disks,
            vsock: Some(&vsock),
            ..Default::default()
        };
        let restored = restore_devices(&vm, &mem, &mut bus, &mut em, &states, backings).unwrap();
        assert_eq!(restored.len(), 4);
        let base = |i: u64| VIRTIO_MMIO_START + i * VIRTIO_MMIO_SIZE;
        // Slot 0 lost its backing, slot 1 got one, slot 2 stays empty.
        assert_eq!(read_capacity(&bus, base(0)), 0);
        assert_eq!(read_capacity(&bus, base(1)), 32);
        assert_eq!(read_capacity(&bus, base(2)), 0);
        assert_eq!(read_capacity(&bus, base(3)), 9);
        assert_eq!(read_u32(&bus, base(3) + 8), 19);
        assert!(vsock.uds_path.exists());
        let saved = restored.save();
        assert!(matches!(&saved[3].device, DeviceState::Vsock(v) if v.cid == 9));
    }

    #[test]
    fn restore_rejects_configs_that_do_not_fit() {
        let Some(vm) = vm() else { return };
        let dir = TempDir::new().unwrap();
        let states = template(&vm, &dir);
        let mem = guest_memory();
        let vsock = VsockConfig {
            cid: 3,
            uds_path: dir.as_path().join("r.sock"),
        };
        let restore = |states: &[MmioDeviceState], disks: &[Option<DiskConfig>], vsock| {
            let vm = self::vm().unwrap();
            let mut bus = Bus::new();
            let mut em = DeviceEventManager::new().unwrap();
            let backings = RestoreBackings {
                disks,
                vsock,
                ..Default::default()
            };
            restore_devices(&vm, &mem, &mut bus, &mut em, states, backings).unwrap_err()
        };

        let err = restore(&states, &[None, None, None, None], Some(&vsock));
        assert!(
            matches!(err, RestoreError::TooManyDisks { given: 4, slots: 3 }),
            "{err}"
        );
        let err = restore(&states, &[], None);
        assert!(matches!(err, RestoreError::MissingVsock), "{err}");
        let err = restore(&states[..3], &[], Some(&vsock));
        assert!(matches!(err, RestoreError::UnexpectedVsock), "{err}");

        let missing = Some(DiskConfig {
            path: PathBuf::from("/nonexistent/vol.img"),
            read_only: false,
        });
        let err = restore(&states, &[None, missing], Some(&vsock));
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/vol.img"), "{msg}");
        assert!(
            msg.contains(&format!("{:#x}", VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE)),
            "{msg}"
        );

        let mut moved = states.clone();
        moved[0].slot.irq = 3;
        let err = restore(&moved, &[], Some(&vsock));
        assert!(
            matches!(err, RestoreError::InvalidSlot { irq: 3, .. }),
            "{err}"
        );

        let mut corrupt = states.clone();
        if let DeviceState::Block(b) = &mut corrupt[2].device {
            b.core.queues[0].size = 100;
        }
        let err = restore(&corrupt, &[], Some(&vsock));
        assert!(matches!(err, RestoreError::AtSlot { .. }), "{err}");
        assert!(err.to_string().contains("virtio-blk"), "{err}");
    }
}
