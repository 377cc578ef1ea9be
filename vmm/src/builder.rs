//! The one place that assembles a VM from a [`VmConfig`]: memory, KVM VM,
//! kernel and initrd, boot tables, legacy devices, virtio devices, vCPUs.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use linux_loader::loader::load_cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::{CMDLINE_START, SERIAL_IRQ};
use crate::arch::x86_64::{mptable, zero_page};
use crate::boot::{cmdline, loader, pvm};
use crate::config::{ConsoleOutput, VmConfig, MAX_VCPUS, MIN_MEM_MIB};
use crate::devices::bus::Bus;
use crate::devices::legacy::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::legacy::serial::{SerialDevice, SerialInput, COM1_PORT_BASE, COM1_PORT_LEN};
use crate::devices::legacy::trigger::EventFdTrigger;
use crate::vmm::{ExitWatch, Vmm};
use crate::vstate::kvm::{open_kvm, KvmError};
use crate::vstate::memory::{create_guest_memory, MemoryError};
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
    if config.mem_mib < MIN_MEM_MIB {
        return Err(BuildError::MemoryTooSmall(config.mem_mib));
    }
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(BuildError::VcpuCount(config.vcpus));
    }
    // Check the files before touching KVM, so the error names what the
    // user got wrong rather than what it prevented.
    for (path, missing) in [
        (Some(&config.kernel), true),
        (config.initrd.as_ref(), false),
    ] {
        if let Some(p) = path {
            if !p.exists() {
                return Err(if missing {
                    loader::LoaderError::KernelMissing(p.clone())
                } else {
                    loader::LoaderError::InitrdMissing(p.clone())
                }
                .into());
            }
        }
    }

    let kvm = open_kvm()?;
    let mem_size = config.mem_mib << 20;
    let mem = create_guest_memory(mem_size)?;
    let vm = create_vm(&kvm, &mem)?;

    let kernel = loader::load_kernel(&mem, &config.kernel)?;
    if kernel.end >= mem_size.min(crate::arch::x86_64::layout::MMIO_GAP_START) {
        return Err(BuildError::KernelTooLarge {
            kernel_end: kernel.end,
            mem_mib: config.mem_mib,
        });
    }
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(&mem, path, kernel.end)?),
        None => None,
    };

    let mut event_manager: EventManager<Subscriber> =
        EventManager::new().map_err(BuildError::EventLoop)?;
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    // COM1 and its input.
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(BuildError::Irq)?;
    let drained = SerialInput::drained_event().map_err(BuildError::EventFd)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        drained.try_clone().map_err(BuildError::EventFd)?,
        console_writer(config.console)?,
    )));
    pio.insert(serial.clone(), COM1_PORT_BASE, COM1_PORT_LEN)?;
    if config.console_input {
        let input = SerialInput::new(serial.clone(), Box::new(std::io::stdin()), drained);
        event_manager.add_subscriber(Arc::new(Mutex::new(input)));
    }

    // The i8042 reset line ends the VM.
    let reset_evt = eventfd()?;
    let i8042 = I8042::new(EventFdTrigger::new(
        reset_evt.try_clone().map_err(BuildError::EventFd)?,
    ));
    pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)?;

    let pvm_line = config.pvm_compat.enabled().then(pvm::compat_cmdline);
    let mut cmdline = cmdline::base_cmdline(pvm_line.as_deref())?;
    crate::devices::virtio::attach::attach_devices(
        &vm,
        &mem,
        &mut mmio,
        &mut event_manager,
        &mut cmdline,
        &config.disks,
        0,
        config.vsock.as_ref(),
    )?;
    cmdline::append_user(&mut cmdline, &config.cmdline)?;

    load_cmdline(&mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BuildError::CmdlineLoad)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let params = zero_page::build_boot_params(mem_size, cmdline_len, initrd)?;
    zero_page::write_boot_params(&mem, &params)?;
    mptable::setup_mptable(&mem, config.vcpus)?;

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
            pio.clone(),
            mmio.clone(),
        )?;
        if id == 0 {
            vcpu.setup_boot_entry(kernel.entry.0)?;
        }
        vcpus.push(vcpu);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (stopped_tx, stopped_rx) = mpsc::channel();
    let stopped_evt = eventfd()?;
    let exit_watch = Arc::new(Mutex::new(ExitWatch::new(
        reset_evt,
        stopped_evt.try_clone().map_err(BuildError::EventFd)?,
        eventfd()?,
    )));
    event_manager.add_subscriber(exit_watch.clone());

    Ok(Vmm::new(
        kvm,
        vm,
        mem,
        event_manager,
        vcpus,
        stop,
        stopped_tx,
        stopped_rx,
        stopped_evt,
        exit_watch,
    ))
}
