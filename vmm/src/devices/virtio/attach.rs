//! Wiring virtio devices into a VM: KVM notifications and interrupt, MMIO
//! bus slot, event loop subscription and the guest's kernel command line.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::block::{Block, BlockError};
use super::device::VirtioDevice;
use super::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use super::vsock::{Vsock, VsockError};
use crate::arch::x86_64::layout::{IRQ_MAX, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::config::{DiskConfig, VsockConfig};
use crate::devices::bus::{lock, Bus, BusError};

/// Registers plus room for the largest device config space.
const MIN_WINDOW: u64 = 0x200;

/// The event loop every device subscribes to.
pub type DeviceEventManager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Where a device lives: its MMIO window and its interrupt line (GSI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
            vm.register_ioevent(evt, &notify, queue as u32)
                .map_err(|source| AttachError::Ioeventfd {
                    base,
                    queue,
                    source,
                })?;
        }
        vm.register_irqfd(dev.interrupt().eventfd(), slot.irq)
            .map_err(|source| AttachError::Irqfd {
                base,
                irq: slot.irq,
                source,
            })?;
    }
    let transport = MmioTransport::new(mem.clone(), device.clone());
    mmio_bus
        .insert(Arc::new(Mutex::new(transport)), base, slot.len)
        .map_err(|source| AttachError::Bus { base, source })?;
    cmdline
        .add_virtio_mmio_device(slot.len, GuestAddress(base), slot.irq, None)
        .map_err(|source| AttachError::Cmdline { base, source })?;
    event_manager.add_subscriber(device);
    Ok(())
}

/// Attaches the VM's disks (in order, so the first is `vda`) and its vsock,
/// in consecutive slots of the VM layout.
pub fn attach_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    event_manager: &mut DeviceEventManager,
    cmdline: &mut Cmdline,
    disks: &[DiskConfig],
    vsock: Option<&VsockConfig>,
) -> Result<(), AttachError> {
    let mut slots = (0..).map(MmioSlot::nth);
    let mut next_slot = || slots.next().flatten().ok_or(AttachError::TooManyDevices);
    for disk in disks {
        let slot = next_slot()?;
        let block = Arc::new(Mutex::new(Block::new(&disk.path, disk.read_only)?));
        attach_mmio_device(vm, mem, mmio_bus, event_manager, cmdline, slot, block)?;
    }
    if let Some(cfg) = vsock {
        let slot = next_slot()?;
        let vsock = Arc::new(Mutex::new(Vsock::new(cfg.cid, &cfg.uds_path)?));
        attach_mmio_device(vm, mem, mmio_bus, event_manager, cmdline, slot, vsock)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kvm_ioctls::Kvm;
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
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
        let err = attach_devices(&vm, &mem, &mut bus, &mut em, &mut cmdline, &[missing], None)
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
            Some(&bad_cid),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CID 2"), "{err}");
    }
}
