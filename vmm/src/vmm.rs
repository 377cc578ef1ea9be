//! A built VM while it runs: the event loop on the calling thread, one
//! thread per vCPU, and the decision of how the VM ended.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::Subscriber;
use crate::devices::bus::lock;
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuHandle, VcpuStop};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("event loop failed: {0}")]
    EventLoop(event_manager::Error),
    /// The guest stopped in a way a healthy guest never does.
    #[error("{0}")]
    Guest(VcpuStop),
    #[error("vCPU threads did not stop")]
    StuckVcpus,
}

/// How a VM ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted or powered off.
    GuestShutdown,
    /// The VMM was asked to stop the VM.
    Stopped,
}

/// Watches the events that end a VM: the i8042 reset line, a vCPU that
/// stopped for good, and an external stop request.
pub struct ExitWatch {
    reset: EventFd,
    vcpu_stopped: EventFd,
    stop_request: EventFd,
    ended: Option<Ending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Reset,
    VcpuStopped,
    Requested,
}

impl ExitWatch {
    pub fn new(reset: EventFd, vcpu_stopped: EventFd, stop_request: EventFd) -> Self {
        ExitWatch {
            reset,
            vcpu_stopped,
            stop_request,
            ended: None,
        }
    }
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in [&self.reset, &self.vcpu_stopped, &self.stop_request] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("cannot watch VM exit events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        let ending = if fd == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            Ending::Reset
        } else if fd == self.vcpu_stopped.as_raw_fd() {
            let _ = self.vcpu_stopped.read();
            Ending::VcpuStopped
        } else {
            let _ = self.stop_request.read();
            Ending::Requested
        };
        self.ended.get_or_insert(ending);
    }
}

/// Stops a running VM from another thread (a signal handler thread, a timeout).
#[derive(Clone)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.write(1);
    }
}

pub struct Vmm {
    // Field order is drop order: vCPUs and devices go before the VM and
    // memory they use.
    event_manager: EventManager<Subscriber>,
    vcpus: Vec<Vcpu>,
    stop: Arc<AtomicBool>,
    stopped_tx: Sender<VcpuStop>,
    stopped_rx: Receiver<VcpuStop>,
    stopped_evt: EventFd,
    exit_watch: Arc<Mutex<ExitWatch>>,
    stop_handle: StopHandle,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    _kvm: Kvm,
}

impl Vmm {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kvm: Kvm,
        vm: VmFd,
        mem: GuestMemoryMmap,
        event_manager: EventManager<Subscriber>,
        vcpus: Vec<Vcpu>,
        stop: Arc<AtomicBool>,
        stopped_tx: Sender<VcpuStop>,
        stopped_rx: Receiver<VcpuStop>,
        stopped_evt: EventFd,
        exit_watch: Arc<Mutex<ExitWatch>>,
    ) -> Self {
        let stop_evt = lock(&exit_watch)
            .stop_request
            .try_clone()
            .expect("eventfd dup");
        Vmm {
            event_manager,
            vcpus,
            stop,
            stopped_tx,
            stopped_rx,
            stopped_evt,
            exit_watch,
            stop_handle: StopHandle(Arc::new(stop_evt)),
            _vm: vm,
            _mem: mem,
            _kvm: kvm,
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop_handle.clone()
    }

    /// Runs the VM until the guest shuts down, a vCPU fails, or a stop is
    /// requested. Returns how it ended; a guest failure is an error.
    pub fn run(mut self) -> Result<VmExit, RunError> {
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus.drain(..) {
            let evt = self
                .stopped_evt
                .try_clone()
                .map_err(|e| RunError::Vcpu(VcpuError::Spawn(0, e)))?;
            match vcpu.spawn(self.stop.clone(), self.stopped_tx.clone(), evt) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop_vcpus(&self.stop, handles);
                    return Err(e.into());
                }
            }
        }

        let ending = loop {
            if let Err(e) = self.event_manager.run() {
                stop_vcpus(&self.stop, handles);
                return Err(RunError::EventLoop(e));
            }
            if let Some(ending) = lock(&self.exit_watch).ended {
                break ending;
            }
        };
        let stuck = !stop_vcpus(&self.stop, handles);

        // The first vCPU to stop on its own says how the guest ended.
        let first = self.stopped_rx.try_iter().find(|r| *r != VcpuStop::Kicked);
        match (ending, first) {
            (_, Some(r @ (VcpuStop::GuestReset | VcpuStop::GuestPowerOff | VcpuStop::Halted))) => {
                log::debug!("VM ended: {r}");
                Ok(VmExit::GuestShutdown)
            }
            (_, Some(failure)) => Err(RunError::Guest(failure)),
            (Ending::Reset, None) => Ok(VmExit::GuestShutdown),
            (Ending::Requested, None) => Ok(VmExit::Stopped),
            (Ending::VcpuStopped, None) if stuck => Err(RunError::StuckVcpus),
            (Ending::VcpuStopped, None) => Ok(VmExit::GuestShutdown),
        }
    }
}

/// Sets the stop flag and kicks every vCPU out of KVM_RUN until all threads
/// have ended. Returns false if some did not end in time.
fn stop_vcpus(stop: &AtomicBool, handles: Vec<VcpuHandle>) -> bool {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handles.iter().any(|h| !h.is_finished()) {
        if Instant::now() > deadline {
            return false;
        }
        for h in handles.iter().filter(|h| !h.is_finished()) {
            h.kick();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for h in handles {
        h.join();
    }
    true
}
