//! Wiring virtio devices into a VM: KVM notifications and interrupt, MMIO
//! bus slot, event loop subscription and the guest's kernel command line.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use serde::{Deserialize, Serialize};

use super::block::{Block, BlockError};
use super::device::VirtioDevice;
use super::fs::{Fs, FsError};
use super::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use super::net::{Net, NetError};
use super::vsock::{Vsock, VsockError};
use crate::arch::x86_64::layout::{IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::config::{DiskConfig, FsConfig, NetConfig, VsockConfig};
use crate::devices::bus::{lock, Bus, BusError};

mod persist;

pub use persist::{restore_devices, DeviceState, MmioDeviceState, MmioSlotState, RestoreBackings};

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
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Net(#[from] NetError),
    /// A restore was given a TAP for a snapshot without a net device.
    #[error("a network device is configured but the snapshot has no virtio-net slot")]
    NoNetSlot,
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
    /// `device` and `subscriber` are one object seen through its two traits.
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
    Fs(Arc<Mutex<Fs>>),
    Net(Arc<Mutex<Net>>),
    Vsock(Arc<Mutex<Vsock>>),
}

impl AttachedDevice {
    fn virtio(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        match self {
            Self::Block(b) => b.clone(),
            Self::Fs(f) => f.clone(),
            Self::Net(n) => n.clone(),
            Self::Vsock(v) => v.clone(),
        }
    }

    fn subscriber(&self) -> Arc<Mutex<dyn MutEventSubscriber + Send>> {
        match self {
            Self::Block(b) => b.clone(),
            Self::Fs(f) => f.clone(),
            Self::Net(n) => n.clone(),
            Self::Vsock(v) => v.clone(),
        }
    }
}

impl From<Arc<Mutex<Fs>>> for AttachedDevice {
    fn from(f: Arc<Mutex<Fs>>) -> Self {
        Self::Fs(f)
    }
}

impl From<Arc<Mutex<Block>>> for AttachedDevice {
    fn from(b: Arc<Mutex<Block>>) -> Self {
        Self::Block(b)
    }
}

impl From<Arc<Mutex<Net>>> for AttachedDevice {
    fn from(n: Arc<Mutex<Net>>) -> Self {
        Self::Net(n)
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
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The tag of a virtio-fs device connected to a backend, if any: such
    /// a VM cannot be snapshotted, because its FUSE session (open files,
    /// inode numbers) lives in the backend, not in the VM.
    pub fn connected_share(&self) -> Option<String> {
        self.devices.iter().find_map(|a| match &a.device {
            AttachedDevice::Fs(f) => {
                let fs = lock(f);
                fs.is_connected().then(|| fs.tag().to_string())
            }
            _ => None,
        })
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

/// The virtio devices of a VM being built, in the order they get slots.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtioDevices<'a> {
    /// In order, so the first is `vda`.
    pub disks: &'a [DiskConfig],
    /// Block slots without backing after the disks, filled when a
    /// snapshot of this VM is restored.
    pub empty_disk_slots: usize,
    pub shares: &'a [FsConfig],
    /// The device gets its own descriptor of the TAP.
    pub net: Option<&'a NetConfig>,
    pub vsock: Option<&'a VsockConfig>,
}

/// Attaches `devices` in consecutive slots of the layout: disks, empty
/// block slots, virtio-fs devices, the net device, then the vsock.
pub fn attach_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut DeviceEventManager,
    cmdline: &mut Cmdline,
    devices: VirtioDevices<'_>,
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
    for disk in devices.disks {
        let block = Block::new(&disk.path, disk.read_only)?;
        attach(&mut attached, Arc::new(Mutex::new(block)).into())?;
    }
    for _ in 0..devices.empty_disk_slots {
        attach(&mut attached, Arc::new(Mutex::new(Block::empty()?)).into())?;
    }
    for share in devices.shares {
        let fs = Fs::new(&share.tag, share.socket.as_deref())?;
        attach(&mut attached, Arc::new(Mutex::new(fs)).into())?;
    }
    if let Some(cfg) = devices.net {
        let net = Net::from_config(cfg)?;
        attach(&mut attached, Arc::new(Mutex::new(net)).into())?;
    }
    if let Some(cfg) = devices.vsock {
        let vsock = Vsock::new(cfg.cid, &cfg.uds_path)?;
        attach(&mut attached, Arc::new(Mutex::new(vsock)).into())?;
    }
    Ok(attached)
}
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kvm_ioctls::Kvm;
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::devices::virtio::test_utils::guest_memory;

    pub(super) fn vm() -> Option<VmFd> {
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
        let devices = VirtioDevices {
            disks: &disks,
            vsock: Some(&vsock),
            ..Default::default()
        };
        attach_devices(&vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap();

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
    fn attaches_net_after_shares_and_before_vsock() {
        let Some(vm) = vm() else { return };
        let dir = TempDir::new().unwrap();
        let img = dir.as_path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let mem = guest_memory();
        let mut bus = Bus::new();
        let mut em = DeviceEventManager::new().unwrap();
        let mut cmdline = Cmdline::new(2048).unwrap();
        let disks = [DiskConfig {
            path: img,
            read_only: false,
        }];
        let shares = [FsConfig {
            tag: "data".into(),
            socket: None,
        }];
        let mac = [0x02, 0, 0, 0, 0, 7];
        let net = NetConfig { tap: None, mac };
        let vsock = VsockConfig {
            cid: 3,
            uds_path: dir.as_path().join("v.sock"),
        };
        let devices = VirtioDevices {
            disks: &disks,
            shares: &shares,
            net: Some(&net),
            vsock: Some(&vsock),
            ..Default::default()
        };
        let attached = attach_devices(&vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap();
        assert_eq!(attached.len(), 4);
        for (i, id) in [2u32, 26, 1, 19].into_iter().enumerate() {
            let base = VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE;
            let mut b = [0u8; 4];
            assert!(bus.read(base + 8, &mut b));
            assert_eq!(u32::from_le_bytes(b), id, "slot {i}");
        }
        let mut config = [0u8; 8];
        assert!(bus.read(
            VIRTIO_MMIO_START + 2 * VIRTIO_MMIO_SIZE + 0x100,
            &mut config
        ));
        assert_eq!(config, [2, 0, 0, 0, 0, 7, 1, 0]);

        let bad = NetConfig {
            tap: None,
            mac: [0xff; 6],
        };
        let devices = VirtioDevices {
            net: Some(&bad),
            ..Default::default()
        };
        let err = attach_devices(&vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap_err();
        assert!(matches!(err, AttachError::Net(_)), "{err}");
        assert!(err.to_string().contains("ff:ff:ff:ff:ff:ff"), "{err}");
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
        let missing = [missing];
        let devices = VirtioDevices {
            disks: &missing,
            ..Default::default()
        };
        let err = attach_devices(&vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap_err();
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
        let devices = VirtioDevices {
            vsock: Some(&bad_cid),
            ..Default::default()
        };
        let err = attach_devices(&vm, &mem, &mut bus, &mut em, &mut cmdline, devices).unwrap_err();
        assert!(err.to_string().contains("CID 2"), "{err}");
    }
}
