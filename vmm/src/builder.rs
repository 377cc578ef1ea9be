//! The one place that assembles a VM: from a [`VmConfig`] (memory, KVM VM,
//! kernel and initrd, boot tables, legacy devices, virtio devices, vCPUs)
//! or from a snapshot and a [`RestoreConfig`] (the same parts, loaded
//! with saved state instead of boot state).

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use linux_loader::loader::load_cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::legacy::persist::SerialDeviceState;

use crate::arch::x86_64::layout::{CMDLINE_START, SERIAL_IRQ};
use crate::arch::x86_64::{mptable, zero_page};
use crate::boot::{cmdline, loader, pvm};
use crate::config::{
    ConsoleOutput, DiskConfig, NetConfig, VmConfig, VsockConfig, MAX_VCPUS, MIN_MEM_MIB,
};
use crate::devices::bus::Bus;
use crate::devices::legacy::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::legacy::serial::{SerialDevice, SerialInput, COM1_PORT_BASE, COM1_PORT_LEN};
use crate::devices::legacy::trigger::EventFdTrigger;
use crate::devices::virtio::RestoreError as DeviceRestoreError;
use crate::devices::virtio::{AttachedDevices, RestoreBackings, VirtioDevices};
use crate::seccomp::ThreadFilters;
use crate::snapshot::{self, HostCpu, SnapshotError, SnapshotPaths};
use crate::vmm::{VmParts, Vmm};
use crate::vstate::kvm::{open_kvm, KvmError};
use crate::vstate::memory::{create_guest_memory, create_shared_guest_memory, MemoryError};
use crate::vstate::persist::StateError;
use crate::vstate::vcpu::{install_kick_handler, Vcpu, VcpuError};
use crate::vstate::vm::{create_vm, VmError};

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("guest memory of {0} MiB is too small (at least {MIN_MEM_MIB} MiB)")]
    MemoryTooSmall(u64),
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, not {0}")]
    VcpuCount(u8),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error("guest memory is too small for the kernel: it ends at {kernel_end:#x}, past {mem_mib} MiB of RAM less what boot needs")]
    KernelTooLarge { kernel_end: u64, mem_mib: u64 },
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("cannot write the command line into guest memory: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    #[error(transparent)]
    ZeroPage(#[from] zero_page::ZeroPageError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot register an interrupt with KVM: {0}")]
    Irq(kvm_ioctls::Error),
    #[error("cannot set up the event loop: {0}")]
    EventLoop(event_manager::Error),
    #[error("cannot place a device on the bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error(transparent)]
    Virtio(#[from] crate::devices::virtio::attach::AttachError),
    #[error("cannot duplicate stdout for the console: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot restore the VM from its snapshot: {0}")]
    State(#[from] StateError),
    #[error("cannot restore the VM's devices: {0}")]
    Devices(#[from] DeviceRestoreError),
}

impl BuildError {
    /// Whether a restore failed because of the snapshot itself (stale,
    /// corrupt, from another host) rather than what it was given.
    pub fn is_snapshot_fault(&self) -> bool {
        matches!(self, BuildError::Snapshot(_) | BuildError::State(_))
    }
}

/// What a restored VM gets that the snapshot cannot hold: where its
/// console goes and the host files behind its devices.
pub struct RestoreConfig {
    /// The directory holding the snapshot's `state` and `memory`.
    pub snapshot_dir: PathBuf,
    pub console: ConsoleOutput,
    /// The backing of each block slot, in slot order; missing or `None`
    /// leaves the slot empty.
    pub disks: Vec<Option<DiskConfig>>,
    /// The host socket (and guest CID) of the restored vsock.
    pub vsock: Option<VsockConfig>,
    /// The backend socket of each virtio-fs slot, in slot order; missing
    /// or `None` leaves the slot unconnected. Any socket makes the restored
    /// guest memory a shareable copy of the snapshot's.
    pub shares: Vec<Option<PathBuf>>,
    /// The TAP (and the MAC its config space now reports) plugged into the
    /// snapshot's virtio-net slot; `None` leaves it without a cable.
    pub net: Option<NetConfig>,
    /// The restored VM's threads are confined by these filters; `None`
    /// only for debugging.
    pub seccomp: Option<Arc<ThreadFilters>>,
}

/// The devices a VM keeps beside its vCPUs, for snapshots and the exit watch.
pub struct VmDevices {
    pub serial: Arc<Mutex<SerialDevice>>,
    pub virtio: AttachedDevices,
    /// Written by the i8042 when the guest pulls its reset line.
    pub reset_evt: EventFd,
}

/// The port-I/O and MMIO buses and the event loop being filled with devices.
struct DeviceWiring {
    event_manager: EventManager<Subscriber>,
    pio: Bus,
    mmio: Bus,
}

impl DeviceWiring {
    fn new() -> Result<Self, BuildError> {
        Ok(DeviceWiring {
            event_manager: EventManager::new().map_err(BuildError::EventLoop)?,
            pio: Bus::new(),
            mmio: Bus::new(),
        })
    }
}

fn eventfd() -> Result<EventFd, BuildError> {
    EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)
}

fn console_writer(output: ConsoleOutput) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match output {
        ConsoleOutput::Stdout => {
            // SAFETY: dup() of fd 1 returns a new descriptor (or -1, checked)
            // that the File below owns exclusively.
            let fd = unsafe { libc::dup(libc::STDOUT_FILENO) };
            if fd < 0 {
                return Err(BuildError::Stdout(std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            Box::new(unsafe { File::from_raw_fd(fd) })
        }
        ConsoleOutput::Writer(w) => w,
        ConsoleOutput::Sink => Box::new(std::io::sink()),
    })
}

/// Builds the VM described by `config`, ready to [`Vmm::run`].
pub fn build(config: VmConfig) -> Result<Vmm, BuildError> {
    check_config(&config)?;
    let kvm = open_kvm()?;
    let mem_size = config.mem_mib << 20;
    let mem = if config.shares.iter().any(|s| s.socket.is_some()) {
        create_shared_guest_memory(mem_size)?
    } else {
        create_guest_memory(mem_size)?
    };
    let vm = create_vm(&kvm, &mem)?;
    let (kernel, initrd) = load_kernel_and_initrd(&config, &mem)?;

    let mut wiring = DeviceWiring::new()?;
    let console = console_writer(config.console)?;
    let (serial, reset_evt) =
        attach_legacy_devices(&vm, &mut wiring, console, config.console_input, None)?;

    let pvm_line = config.pvm_compat.enabled().then(pvm::compat_cmdline);
    let mut cmdline = cmdline::base_cmdline(pvm_line.as_deref())?;
    let virtio = crate::devices::virtio::attach::attach_devices(
        &vm,
        &mem,
        &mut wiring.mmio,
        &mut wiring.event_manager,
        &mut cmdline,
        VirtioDevices {
            disks: &config.disks,
            empty_disk_slots: config.empty_disk_slots,
            shares: &config.shares,
            net: config.net.as_ref(),
            vsock: config.vsock.as_ref(),
        },
    )?;
    cmdline::append_user(&mut cmdline, &config.cmdline)?;
    write_boot_tables(&mem, &cmdline, mem_size, initrd, config.vcpus)?;

    install_kick_handler()?;
    let mut base_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(VmError::Cpuid)?;
    if config.pvm_compat.enabled() {
        // Hypercalls never complete under PVM's emulator; see the function.
        crate::arch::x86_64::cpuid::hide_hypercall_features(&mut base_cpuid);
    }
    let mut vcpus = Vec::with_capacity(config.vcpus as usize);
    for id in 0..config.vcpus {
        let vcpu = Vcpu::new(
            &vm,
            id,
            config.vcpus,
            &base_cpuid,
            mem.clone(),
            wiring.pio.clone(),
            wiring.mmio.clone(),
        )?;
        if id == 0 {
            vcpu.setup_boot_entry(kernel)?;
        }
        vcpus.push(vcpu);
    }
    let vmm = finish(kvm, vm, mem, wiring, serial, virtio, reset_evt, vcpus)?;
    Ok(vmm.confined_by(config.seccomp))
}

/// Restores the VM snapshotted in `config.snapshot_dir`, ready to
/// [`Vmm::run`]: its vCPUs continue where they stopped.
pub fn restore(config: RestoreConfig) -> Result<Vmm, BuildError> {
    let kvm = open_kvm()?;
    let host = HostCpu::of(&kvm)?;
    let state = snapshot::read_state(&config.snapshot_dir, &host)?;
    let paths = SnapshotPaths::in_dir(&config.snapshot_dir);
    let mut populate = None;
    let mem = if config.shares.iter().any(Option::is_some) {
        // A backend maps guest memory too: the VM gets its own shareable
        // copy of the snapshot's data, which also leaves nothing to populate.
        snapshot::memory::restore_memory_shared(&paths.memory, state.mem_size)
            .map_err(SnapshotError::from)?
    } else {
        let mem = snapshot::memory::restore_memory(&paths.memory, state.mem_size)
            .map_err(SnapshotError::from)?;
        // Opened now: the VM may run with less access than it is built with.
        populate = File::open(&paths.memory).ok();
        mem
    };
    let vm = create_vm(&kvm, &mem)?;
    crate::vstate::persist::restore_vm(&vm, &state.vm)?;

    let mut wiring = DeviceWiring::new()?;
    let console = console_writer(config.console)?;
    let (serial, reset_evt) =
        attach_legacy_devices(&vm, &mut wiring, console, false, Some(&state.serial))?;
    let virtio = crate::devices::virtio::attach::restore_devices(
        &vm,
        &mem,
        &mut wiring.mmio,
        &mut wiring.event_manager,
        &state.devices,
        RestoreBackings {
            disks: &config.disks,
            shares: &config.shares,
            net: config.net.as_ref(),
            vsock: config.vsock.as_ref(),
        },
    )?;

    install_kick_handler()?;
    let vcpus = state
        .vcpus
        .iter()
        .map(|s| {
            Vcpu::restore(
                &kvm,
                &vm,
                s,
                mem.clone(),
                wiring.pio.clone(),
                wiring.mmio.clone(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vmm = finish(kvm, vm, mem, wiring, serial, virtio, reset_evt, vcpus)?;
    Ok(vmm.confined_by(config.seccomp).populating(populate))
}

fn check_config(config: &VmConfig) -> Result<(), BuildError> {
    if config.mem_mib < MIN_MEM_MIB {
        return Err(BuildError::MemoryTooSmall(config.mem_mib));
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(BuildError::VcpuCount(config.vcpus));
    }
    // Check the files before touching KVM, so the error names what the
    // user got wrong rather than what it prevented.
    if !config.kernel.exists() {
        return Err(loader::LoaderError::KernelMissing(config.kernel.clone()).into());
    }
    if let Some(p) = config.initrd.as_ref().filter(|p| !p.exists()) {
        return Err(loader::LoaderError::InitrdMissing(p.clone()).into());
    }
    Ok(())
}

/// Loads the kernel and initrd; returns the kernel entry point and where
/// the initrd went.
fn load_kernel_and_initrd(
    config: &VmConfig,
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<(u64, Option<zero_page::InitrdPlacement>), BuildError> {
    let mem_size = config.mem_mib << 20;
    let kernel = loader::load_kernel(mem, &config.kernel)?;
    if kernel.end >= mem_size.min(crate::arch::x86_64::layout::MMIO_GAP_START) {
        return Err(BuildError::KernelTooLarge {
            kernel_end: kernel.end,
            mem_mib: config.mem_mib,
        });
    }
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(mem, path, kernel.end)?),
        None => None,
    };
    Ok((kernel.entry.0, initrd))
}

/// COM1 (with its input when asked) and the i8042 reset line. Returns the
/// UART and the eventfd the reset line writes.
fn attach_legacy_devices(
    vm: &kvm_ioctls::VmFd,
    wiring: &mut DeviceWiring,
    console: Box<dyn Write + Send>,
    console_input: bool,
    serial_state: Option<&SerialDeviceState>,
) -> Result<(Arc<Mutex<SerialDevice>>, EventFd), BuildError> {
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(BuildError::Irq)?;
    let drained = SerialInput::drained_event().map_err(BuildError::EventFd)?;
    let drained_dup = drained.try_clone().map_err(BuildError::EventFd)?;
    let device = match serial_state {
        Some(state) => SerialDevice::restore(state, serial_irq, drained_dup, console)?,
        None => SerialDevice::new(serial_irq, drained_dup, console),
    };
    let serial = Arc::new(Mutex::new(device));
    wiring
        .pio
        .insert(serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)?;
    if console_input {
        let input = SerialInput::new(serial.clone(), Box::new(std::io::stdin()), drained);
        wiring
            .event_manager
            .add_subscriber(Arc::new(Mutex::new(input)));
    }

    // The i8042 reset line ends the VM. It keeps no state worth saving.
    let reset_evt = eventfd()?;
    let i8042 = I8042::new(EventFdTrigger::new(
        reset_evt.try_clone().map_err(BuildError::EventFd)?,
    ));
    wiring
        .pio
        .insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)?;
    Ok((serial, reset_evt))
}

/// The command line, zero page and MP table.
fn write_boot_tables(
    mem: &vm_memory::GuestMemoryMmap,
    cmdline: &linux_loader::cmdline::Cmdline,
    mem_size: u64,
    initrd: Option<zero_page::InitrdPlacement>,
    vcpus: u8,
) -> Result<(), BuildError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BuildError::CmdlineLoad)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let params = zero_page::build_boot_params(mem_size, cmdline_len, initrd)?;
    zero_page::write_boot_params(mem, &params)?;
    mptable::setup_mptable(mem, vcpus)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish(
    kvm: kvm_ioctls::Kvm,
    vm: kvm_ioctls::VmFd,
    mem: vm_memory::GuestMemoryMmap,
    wiring: DeviceWiring,
    serial: Arc<Mutex<SerialDevice>>,
    virtio: AttachedDevices,
    reset_evt: EventFd,
    vcpus: Vec<Vcpu>,
) -> Result<Vmm, BuildError> {
    let parts = VmParts {
        kvm,
        vm,
        mem,
        event_manager: wiring.event_manager,
        devices: VmDevices {
            serial,
            virtio,
            reset_evt,
        },
    };
    Vmm::new(parts, vcpus).map_err(BuildError::EventFd)
}
