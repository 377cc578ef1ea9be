//! Wiring virtio devices into a VM: KVM notifications and interrupt, MMIO
//! bus slot, event loop subscription and the guest's kernel command line.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use serde::{Deserialize, Serialize};

use super::block::{Block, BlockError, BlockState};
use super::device::VirtioDevice;
use super::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use super::persist::{MmioTransportState, RestoreError};
use super::vsock::{Vsock, VsockError, VsockState};
use crate::arch::x86_64::layout::{IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::config::{DiskConfig, VsockConfig};
use crate::devices::bus::{lock, Bus, BusError};

/// Registers plus room for the largest device config space.
const MIN_WINDOW: u64 = 0x200;

/// The event loop every device subscribes to.
pub type DeviceEventManager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Where a device lives: its MMIO window and its interrupt line (GSI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioSlot {
    pub base: u64,
    pub len: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The `index`-th slot of the VM layout, if an IRQ is left for it.
    pub fn nth(index: usize) -> Option<Self> {
        let irq = VIRTIO_IRQ_BASE.checked_add(u32::try_from(index).ok()?)?;
        (irq <= IRQ_MAX).then(|| Self {
            base: VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE,
            len: VIRTIO_MMIO_SIZE,
            irq,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "cannot register the interrupt (GSI {irq}) of the virtio device at {base:#x}: {source}"
    )]
    Irqfd {
        base: u64,
        irq: u32,
        source: kvm_ioctls::Error,
    },
    #[error(
        "cannot register the notifier of queue {queue} of the virtio device at {base:#x}: {source}"
    )]
    Ioeventfd {
        base: u64,
        queue: usize,
        source: kvm_ioctls::Error,
    },
    #[error("cannot place the virtio device at {base:#x}: {source}")]
    Bus { base: u64, source: BusError },
    #[error("cannot add the virtio device at {base:#x} to the kernel command line: {source}")]
    Cmdline {
        base: u64,
        source: linux_loader::cmdline::Error,
    },
    #[error("MMIO window {base:#x}+{len:#x} cannot hold a virtio-mmio device")]
    InvalidSlot { base: u64, len: u64 },
    #[error("too many virtio devices: only {} fit the IRQ range", IRQ_MAX - VIRTIO_IRQ_BASE + 1)]
    TooManyDevices,
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
}

/// Wires `device` into the VM at `slot`:
/// - one ioeventfd per queue on QueueNotify (matching the queue index), so a
///   guest kick signals the event loop without a vCPU exit to userspace;
/// - the device's interrupt eventfd as an irqfd on `slot.irq`;
/// - an [`MmioTransport`] on `mmio_bus`;
/// - the device as a subscriber of `event_manager`;
/// - `virtio_mmio.device=4K@<base>:<irq>` on the guest command line.
pub fn attach_mmio_device<D>(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut DeviceEventManager,
    cmdline: &mut Cmdline,
    slot: MmioSlot,
    device: Arc<Mutex<D>>,
) -> Result<(), AttachError>
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let transport = MmioTransport::new(mem.clone(), device.clone());
    Wiring::new(vm, mmio_bus, event_manager).wire(slot, device.clone(), device, transport)?;
    add_to_cmdline(cmdline, slot)
}

fn add_to_cmdline(cmdline: &mut Cmdline, slot: MmioSlot) -> Result<(), AttachError> {
    cmdline
        .add_virtio_mmio_device(slot.len, GuestAddress(slot.base), slot.irq, None)
        .map_err(|source| AttachError::Cmdline {
            base: slot.base,
            source,
        })
}

/// What wiring a device into the VM needs, for both a cold boot and a
/// restore (which differ only in how the transport starts out and in the
/// command line a restored guest has long since parsed).
struct Wiring<'a> {
    vm: &'a VmFd,
    mmio_bus: &'a mut Bus,
    event_manager: &'a mut DeviceEventManager,
}

impl<'a> Wiring<'a> {
    fn new(vm: &'a VmFd, mmio_bus: &'a mut Bus, event_manager: &'a mut DeviceEventManager) -> Self {
        Self {
            vm,
            mmio_bus,
            event_manager,
        }
    }

    /// Everything [`attach_mmio_device`] does except the command line.
    /// Returns the transport now on the bus.
    fn wire(
        &mut self,
        slot: MmioSlot,
        device: Arc<Mutex<dyn VirtioDevice>>,
        subscriber: Arc<Mutex<dyn MutEventSubscriber + Send>>,
        transport: MmioTransport,
    ) -> Result<Arc<Mutex<MmioTransport>>, AttachError> {
        let base = slot.base;
        // The registers end where config space begins, at 0x100.
        if slot.len < MIN_WINDOW || base.checked_add(slot.len).is_none() {
            return Err(AttachError::InvalidSlot {
                base,
                len: slot.len,
            });
        }
        {
            let dev = lock(&device);
            let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                // The guest writes the queue index as a 32-bit value.
                self.vm
                    .register_ioevent(evt, &notify, queue as u32)
                    .map_err(|source| AttachError::Ioeventfd {
                        base,
                        queue,
                        source,
                    })?;
            }
            self.vm
                .register_irqfd(dev.interrupt().eventfd(), slot.irq)
                .map_err(|source| AttachError::Irqfd {
                    base,
                    irq: slot.irq,
                    source,
                })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio_bus
            .insert(transport.clone(), base, slot.len)
            .map_err(|source| AttachError::Bus { base, source })?;
        self.event_manager.add_subscriber(subscriber);
        Ok(transport)
    }
}

/// The virtio devices of a VM, kept so their state can be saved.
#[derive(Default)]
pub struct AttachedDevices {
    devices: Vec<Attached>,
}

struct Attached {
    slot: MmioSlot,
    transport: Arc<Mutex<MmioTransport>>,
    device: AttachedDevice,
}

/// The concrete device behind a transport, which `save` needs.
enum AttachedDevice {
    Block(Arc<Mutex<Block>>),
    Vsock(Arc<Mutex<Vsock>>),
}

impl AttachedDevice {
    fn virtio(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        match self {
            Self::Block(b) => b.clone(),
            Self::Vsock(v) => v.clone(),
        }
    }

    fn subscriber(&self) -> Arc<Mutex<dyn MutEventSubscriber + Send>> {
        match self {
            Self::Block(b) => b.clone(),
            Self::Vsock(v) => v.clone(),
        }
    }
}

impl From<Arc<Mutex<Block>>> for AttachedDevice {
    fn from(b: Arc<Mutex<Block>>) -> Self {
        Self::Block(b)
    }
}

impl From<Arc<Mutex<Vsock>>> for AttachedDevice {
    fn from(v: Arc<Mutex<Vsock>>) -> Self {
        Self::Vsock(v)
    }
}

impl std::fmt::Debug for AttachedDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots: Vec<_> = self.devices.iter().map(|a| a.slot).collect();
        f.debug_struct("AttachedDevices")
            .field("slots", &slots)
            .finish()
    }
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
                    AttachedDevice::Vsock(v) => DeviceState::Vsock(lock(v).save()),
                },
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Wires `device` at `slot` behind `transport` and keeps it for saving.
    fn add(
        &mut self,
        wiring: &mut Wiring<'_>,
        slot: MmioSlot,
        device: AttachedDevice,
        transport: MmioTransport,
    ) -> Result<(), AttachError> {
        let transport = wiring.wire(slot, device.virtio(), device.subscriber(), transport)?;
        self.devices.push(Attached {
            slot,
            transport,
            device,
        });
        Ok(())
    }
}

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
    Vsock(VsockState),
}

/// Attaches the VM's disks (in order, so the first is `vda`), then
/// `empty_disk_slots` block slots without backing (filled when a snapshot of
/// this VM is restored), then its vsock, in consecutive slots of the layout.
#[allow(clippy::too_many_arguments)]
pub fn attach_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut DeviceEventManager,
    cmdline: &mut Cmdline,
    disks: &[DiskConfig],
    empty_disk_slots: usize,
    vsock: Option<&VsockConfig>,
) -> Result<AttachedDevices, AttachError> {
    let mut wiring = Wiring::new(vm, mmio_bus, event_manager);
    let mut attached = AttachedDevices::default();
    let mut slots = (0..).map(MmioSlot::nth);
    let mut attach = |attached: &mut AttachedDevices, device: AttachedDevice| {
        let slot = slots.next().flatten().ok_or(AttachError::TooManyDevices)?;
        let transport = MmioTransport::new(mem.clone(), device.virtio());
        attached.add(&mut wiring, slot, device, transport)?;
        add_to_cmdline(cmdline, slot)
    };
    for disk in disks {
        let block = Block::new(&disk.path, disk.read_only)?;
        attach(&mut attached, Arc::new(Mutex::new(block)).into())?;
    }
    for _ in 0..empty_disk_slots {
        attach(&mut attached, Arc::new(Mutex::new(Block::empty()?)).into())?;
    }
    if let Some(cfg) = vsock {
        let vsock = Vsock::new(cfg.cid, &cfg.uds_path)?;
        attach(&mut attached, Arc::new(Mutex::new(vsock)).into())?;
    }
    Ok(attached)
}
/// Re-wires the devices of a snapshot, each at its saved slot (ioeventfds,
/// irqfd, bus, event loop; the guest parsed its command line long ago).
///
/// Block slots, in saved order, get `disks[i]` as their new backing; a
/// missing or `None` entry leaves the slot empty. The vsock listens on the
/// configured socket and takes the configured CID. Devices the snapshot
/// saved as active are re-activated against `mem`.
pub fn restore_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut DeviceEventManager,
    states: &[MmioDeviceState],
    disks: &[Option<DiskConfig>],
    vsock: Option<&VsockConfig>,
) -> Result<AttachedDevices, RestoreError> {
    check_restore_config(states, disks, vsock)?;
    let mut wiring = Wiring::new(vm, mmio_bus, event_manager);
    let mut attached = AttachedDevices::default();
    let mut disks = disks.iter();
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
    disks: &[Option<DiskConfig>],
    vsock: Option<&VsockConfig>,
) -> Result<(), RestoreError> {
    let count = |block: bool| {
        states
            .iter()
            .filter(|s| matches!(s.device, DeviceState::Block(_)) == block)
            .count()
    };
    let slots = count(true);
    if disks.len() > slots {
        return Err(RestoreError::TooManyDisks {
            given: disks.len(),
            slots,
        });
    }
    match (count(false), vsock) {
        (0, Some(_)) => Err(RestoreError::UnexpectedVsock),
        (1, None) => Err(RestoreError::MissingVsock),
        (n, _) if n > 1 => Err(RestoreError::DuplicateVsock),
        _ => Ok(()),
    }
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

    use kvm_ioctls::Kvm;
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::devices::virtio::persist::RestoreError;
    use crate::devices::virtio::test_utils::guest_memory;

    fn vm() -> Option<VmFd> {
        let kvm = match Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("skipping: no KVM ({e})");
                return None;
            }
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        Some(vm)
    }

    #[test]
    fn slots_follow_the_layout() {
        let first = MmioSlot::nth(0).unwrap();
        assert_eq!(first.base, VIRTIO_MMIO_START);
        assert_eq!(first.irq, VIRTIO_IRQ_BASE);
        assert_eq!(
            MmioSlot::nth(1).unwrap().base,
            VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE
        );
        let last = (IRQ_MAX - VIRTIO_IRQ_BASE) as usize;
        assert_eq!(MmioSlot::nth(last).unwrap().irq, IRQ_MAX);
        assert_eq!(MmioSlot::nth(last + 1), None);
    }

    #[test]
    fn attaches_disks_and_vsock() {
        let Some(vm) = vm() else { return };
        let dir = TempDir::new().unwrap();
        let img = dir.as_path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let mut cmdline = Cmdline::new(2048).unwrap();
        let disks = [
            DiskConfig {
                path: img.clone(),
                read_only: false,
            },
            DiskConfig {
                path: img,
                read_only: true,
            },
        ];
        let vsock = VsockConfig {
            cid: 3,
            uds_path: dir.as_path().join("v.sock"),
        };
        attach_devices(
            &vm,
            &mem,
            &mut bus,
            &mut em,
            &mut cmdline,
            &disks,
            0,
            Some(&vsock),
        )
        .unwrap();

        let line = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(
            line,
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
             virtio_mmio.device=4K@0xd0002000:7"
        );
        for (i, id) in [2u32, 2, 19].into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
            let mut b = [0u8; 4];
            assert!(bus.read(base, &mut b));
            assert_eq!(u32::from_le_bytes(b), 0x7472_6976);
            assert!(bus.read(base + 8, &mut b));
            assert_eq!(u32::from_le_bytes(b), id);
        }
        assert!(vsock.uds_path.exists());
    }

    #[test]
    fn attach_errors_name_the_problem() {
        let Some(vm) = vm() else { return };
        let dir = TempDir::new().unwrap();
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let mut cmdline = Cmdline::new(2048).unwrap();
        let missing = DiskConfig {
            path: PathBuf::from("/nonexistent/disk.img"),
            read_only: true,
        };
        let err = attach_devices(
            &vm,
            &mem,
            &mut bus,
            &mut em,
            &mut cmdline,
            &[missing],
            0,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");

        let img = dir.as_path().join("a.img");
        std::fs::write(&img, vec![0u8; 512]).unwrap();
        let slot = MmioSlot::nth(0).unwrap();
        let dev = Arc::new(Mutex::new(Block::new(&img, true).unwrap()));
        attach_mmio_device(&vm, &mem, &mut bus, &mut em, &mut cmdline, slot, dev).unwrap();
        // Same window again: the ioeventfd address is taken first.
        let dev = Arc::new(Mutex::new(Block::new(&img, true).unwrap()));
        let err =
            attach_mmio_device(&vm, &mem, &mut bus, &mut em, &mut cmdline, slot, dev).unwrap_err();
        assert!(
            matches!(err, AttachError::Ioeventfd { .. } | AttachError::Bus { .. }),
            "{err}"
        );

        let tiny = MmioSlot {
            base: 0xd000_8000,
            len: 0x10,
            irq: 9,
        };
        let dev = Arc::new(Mutex::new(Block::new(&img, true).unwrap()));
        let err =
            attach_mmio_device(&vm, &mem, &mut bus, &mut em, &mut cmdline, tiny, dev).unwrap_err();
        assert!(matches!(err, AttachError::InvalidSlot { .. }), "{err}");

        let bad_cid = VsockConfig {
            cid: 2,
            uds_path: dir.as_path().join("v.sock"),
        };
        let err = attach_devices(
            &vm,
            &mem,
            &mut bus,
            &mut em,
            &mut cmdline,
            &[],
            0,
            Some(&bad_cid),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CID 2"), "{err}");
    }

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
        let attached = attach_devices(
            vm,
            &mem,
            &mut bus,
            &mut em,
            &mut cmdline,
            &disks,
            2,
            Some(&vsock),
        )
        .unwrap();
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
        let restored =
            restore_devices(&vm, &mem, &mut bus, &mut em, &states, &disks, Some(&vsock)).unwrap();
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
            restore_devices(&vm, &mem, &mut bus, &mut em, states, disks, vsock).unwrap_err()
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
