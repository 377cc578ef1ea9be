//! A built VM while it runs: the event loop on the calling thread, one
//! thread per vCPU, and the decision of how the VM ended.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::{Subscriber, VmDevices};
use crate::devices::bus::lock;
use crate::seccomp::{SeccompError, ThreadFilters, ThreadKind};
use crate::snapshot::{self, HostCpu, SnapshotError, SnapshotState};
use crate::vstate::persist::{self as kvm_state, StateError};
use crate::vstate::vcpu::{Gate, StartGate, Vcpu, VcpuError, VcpuHandle, VcpuStop};

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
    #[error("cannot snapshot the VM: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("cannot snapshot the VM: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("a vCPU thread ended before it was confined")]
    VcpuLost,
}

/// How a VM ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted or powered off.
    GuestShutdown,
    /// The VMM was asked to stop the VM.
    Stopped,
    /// The VM was snapshotted as asked, then ended.
    Snapshotted,
}

/// Watches the events that end a VM: the i8042 reset line, a vCPU that
/// stopped for good, an external stop request and a snapshot request.
pub struct ExitWatch {
    reset: EventFd,
    vcpu_stopped: EventFd,
    stop_request: EventFd,
    snapshot_request: Arc<SnapshotRequest>,
    ended: Option<Ending>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Reset,
    VcpuStopped,
    Requested,
    Snapshot,
}

/// Where to write a snapshot, and the eventfd that asks for it.
pub struct SnapshotRequest {
    evt: EventFd,
    dir: Mutex<Option<PathBuf>>,
}

impl SnapshotRequest {
    pub fn new(evt: EventFd) -> Self {
        SnapshotRequest {
            evt,
            dir: Mutex::new(None),
        }
    }
}

impl ExitWatch {
    pub fn new(
        reset: EventFd,
        vcpu_stopped: EventFd,
        stop_request: EventFd,
        snapshot_request: Arc<SnapshotRequest>,
    ) -> Self {
        ExitWatch {
            reset,
            vcpu_stopped,
            stop_request,
            snapshot_request,
            ended: None,
        }
    }
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in [
            &self.reset,
            &self.vcpu_stopped,
            &self.stop_request,
            &self.snapshot_request.evt,
        ] {
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
        } else if fd == self.snapshot_request.evt.as_raw_fd() {
            let _ = self.snapshot_request.evt.read();
            Ending::Snapshot
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

/// Asks a running VM, from any thread, to snapshot itself into a
/// directory and end; [`Vmm::run`] then returns [`VmExit::Snapshotted`].
#[derive(Clone)]
pub struct SnapshotHandle(Arc<SnapshotRequest>);

impl SnapshotHandle {
    pub fn snapshot_to(&self, dir: PathBuf) {
        *self.0.dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
        let _ = self.0.evt.write(1);
    }
}

/// The parts of a VM the run loop needs beside the vCPUs.
pub(crate) struct VmParts {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub mem: GuestMemoryMmap,
    pub event_manager: EventManager<Subscriber>,
    pub devices: VmDevices,
}

/// How the vCPU threads report back.
struct VcpuReports {
    stop: Arc<AtomicBool>,
    stopped_tx: Sender<VcpuStop>,
    stopped_rx: Receiver<VcpuStop>,
    stopped_evt: EventFd,
}

pub struct Vmm {
    // Field order is drop order: vCPUs and devices go before the VM and
    // memory they use.
    event_manager: EventManager<Subscriber>,
    devices: VmDevices,
    vcpus: Vec<Vcpu>,
    reports: VcpuReports,
    exit_watch: Arc<Mutex<ExitWatch>>,
    stop_handle: StopHandle,
    snapshot_request: Arc<SnapshotRequest>,
    vm: VmFd,
    mem: GuestMemoryMmap,
    kvm: Kvm,
    seccomp: Option<Arc<ThreadFilters>>,
    /// The memory file of a restored VM, whose data pages a thread faults
    /// in while the guest runs.
    populate: Option<File>,
}

impl Vmm {
    /// Wires up the run loop's own events around a built or restored VM.
    pub(crate) fn new(mut parts: VmParts, vcpus: Vec<Vcpu>) -> Result<Self, std::io::Error> {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK);
        let stopped_evt = eventfd()?;
        let stop_evt = eventfd()?;
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let snapshot_request = Arc::new(SnapshotRequest::new(eventfd()?));
        let exit_watch = Arc::new(Mutex::new(ExitWatch::new(
            parts.devices.reset_evt.try_clone()?,
            stopped_evt.try_clone()?,
            stop_evt.try_clone()?,
            snapshot_request.clone(),
        )));
        parts.event_manager.add_subscriber(exit_watch.clone());
        Ok(Vmm {
            event_manager: parts.event_manager,
            devices: parts.devices,
            vcpus,
            reports: VcpuReports {
                stop: Arc::new(AtomicBool::new(false)),
                stopped_tx,
                stopped_rx,
                stopped_evt,
            },
            exit_watch,
            stop_handle: StopHandle(Arc::new(stop_evt)),
            snapshot_request,
            vm: parts.vm,
            mem: parts.mem,
            kvm: parts.kvm,
            seccomp: None,
            populate: None,
        })
    }

    /// Confines the threads [`Vmm::run`] runs the VM on (itself included).
    pub(crate) fn confined_by(mut self, seccomp: Option<Arc<ThreadFilters>>) -> Self {
        self.seccomp = seccomp;
        self
    }

    /// Has [`Vmm::run`] fault in the data pages of `memory_file` beside
    /// the guest.
    pub(crate) fn populating(mut self, memory_file: Option<File>) -> Self {
        self.populate = memory_file;
        self
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop_handle.clone()
    }

    /// Stops the VM once `controller` becomes readable or hangs up: the
    /// process that drives this VMM from another process writes to it to
    /// stop the VM, and its death closes it, so a VM never outlives it.
    pub fn stop_when_readable(&mut self, controller: OwnedFd) {
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(ControllerWatch {
                fd: controller,
                stop: self.stop_handle.clone(),
            })));
    }

    pub fn snapshot_handle(&self) -> SnapshotHandle {
        SnapshotHandle(self.snapshot_request.clone())
    }

    /// Saves the stopped VM into `dir`.
    fn write_snapshot(&self, vcpus: &[Vcpu], dir: &std::path::Path) -> Result<(), RunError> {
        if let Some(tag) = self.devices.virtio.connected_share() {
            return Err(SnapshotError::ConnectedShare(tag).into());
        }
        let msr_indices = kvm_state::msrs_to_save(&self.kvm)?;
        let vcpu_states = vcpus
            .iter()
            .map(|v| v.save(&self.kvm, &msr_indices))
            .collect::<Result<Vec<_>, _>>()?;
        let mem_size = vm_memory::GuestMemoryBackend::iter(&self.mem)
            .map(vm_memory::GuestMemoryRegion::len)
            .sum();
        let state = SnapshotState {
            vmm_version: snapshot::VMM_VERSION.to_string(),
            host_cpu: HostCpu::of(&self.kvm)?,
            mem_size,
            vm: kvm_state::save_vm(&self.vm)?,
            vcpus: vcpu_states,
            serial: lock(&self.devices.serial).save(),
            devices: self.devices.virtio.save(),
        };
        snapshot::write_snapshot(dir, &state, &self.mem)?;
        Ok(())
    }

    /// Runs the VM until the guest shuts down, a vCPU fails, or a stop is
    /// requested. Returns how it ended; a guest failure is an error.
    pub fn run(mut self) -> Result<VmExit, RunError> {
        let stop = self.reports.stop.clone();
        if let Some(file) = self.populate.take() {
            populate_in_background(&self.mem, file, self.seccomp.clone());
        }
        let handles = self.start_vcpus_confined()?;

        let ending = loop {
            if let Err(e) = self.event_manager.run() {
                stop_vcpus(&stop, handles);
                return Err(RunError::EventLoop(e));
            }
            if let Some(ending) = lock(&self.exit_watch).ended {
                break ending;
            }
        };
        let stopped = stop_vcpus(&stop, handles);
        let stuck = stopped.is_none();

        // The first vCPU to stop on its own says how the guest ended.
        let first = self
            .reports
            .stopped_rx
            .try_iter()
            .find(|r| *r != VcpuStop::Kicked);
        if let (Ending::Snapshot, None, Some(vcpus)) = (ending, &first, &stopped) {
            let dir = self
                .snapshot_request
                .dir
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(dir) = dir {
                self.write_snapshot(vcpus, &dir)?;
                return Ok(VmExit::Snapshotted);
            }
        }
        match (ending, first) {
            (_, Some(r @ (VcpuStop::GuestReset | VcpuStop::GuestPowerOff | VcpuStop::Halted))) => {
                log::debug!("VM ended: {r}");
                Ok(VmExit::GuestShutdown)
            }
            (_, Some(failure)) => Err(RunError::Guest(failure)),
            (Ending::Reset, None) => Ok(VmExit::GuestShutdown),
            (Ending::Requested | Ending::Snapshot, None) => Ok(VmExit::Stopped),
            (Ending::VcpuStopped, None) if stuck => Err(RunError::StuckVcpus),
            (Ending::VcpuStopped, None) => Ok(VmExit::GuestShutdown),
        }
    }
}

impl Vmm {
    /// Starts a thread per vCPU and confines them and the calling thread
    /// (which becomes the event loop) with their seccomp filters; only then
    /// are the vCPUs let into the guest. If any filter cannot be installed
    /// no guest instruction runs.
    fn start_vcpus_confined(&mut self) -> Result<Vec<VcpuHandle>, RunError> {
        let stop = self.reports.stop.clone();
        let open = Arc::new(Gate::default());
        let (confined_tx, confined_rx) = std::sync::mpsc::channel();
        let mut handles: Vec<VcpuHandle> = Vec::with_capacity(self.vcpus.len());
        let abort = |handles: Vec<VcpuHandle>, e: RunError| {
            stop.store(true, Ordering::Release);
            open.open();
            stop_vcpus(&stop, handles);
            Err(e)
        };
        for vcpu in self.vcpus.drain(..) {
            let id = vcpu.id();
            let gate = StartGate {
                filters: self.seccomp.clone(),
                confined: confined_tx.clone(),
                open: open.clone(),
            };
            let spawned = self
                .reports
                .stopped_evt
                .try_clone()
                .map_err(|e| VcpuError::Spawn(id, e));
            match spawned.and_then(|evt| {
                vcpu.spawn(stop.clone(), self.reports.stopped_tx.clone(), evt, gate)
            }) {
                Ok(h) => handles.push(h),
                Err(e) => return abort(handles, e.into()),
            }
        }
        drop(confined_tx);
        for _ in 0..handles.len() {
            match confined_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return abort(handles, e.into()),
                Err(_) => return abort(handles, RunError::VcpuLost),
            }
        }
        if let Some(filters) = &self.seccomp {
            if let Err(e) = filters.install(ThreadKind::EventLoop) {
                return abort(handles, e.into());
            }
        }
        open.open();
        Ok(handles)
    }
}

/// Fills the host page table for the snapshot's data pages while the
/// guest starts: pages it reaches first are faulted in by it as they
/// would be anyway.
fn populate_in_background(mem: &GuestMemoryMmap, file: File, seccomp: Option<Arc<ThreadFilters>>) {
    let mem = mem.clone();
    let spawned = std::thread::Builder::new()
        .name("populate".into())
        .spawn(move || {
            if let Some(Err(e)) = seccomp.map(|f| f.install(ThreadKind::Populate)) {
                log::error!("{e}; guest memory is faulted in on demand instead");
                return;
            }
            let start = Instant::now();
            match snapshot::memory::populate_data(&mem, &file) {
                Ok(bytes) => log::debug!(
                    "populated {} MiB of guest memory in {:?}",
                    bytes >> 20,
                    start.elapsed()
                ),
                Err(e) => log::debug!("cannot populate guest memory: {e}"),
            }
        });
    if let Err(e) = spawned {
        log::debug!("cannot start populating guest memory: {e}");
    }
}

/// Stops the VM when its controlling descriptor has news: a request or
/// the controller's end.
struct ControllerWatch {
    fd: OwnedFd,
    stop: StopHandle,
}

impl MutEventSubscriber for ControllerWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch the VMM's controller: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        self.stop.stop();
        // Level-triggered: once is enough.
        let _ = ops.remove(Events::new(&self.fd, EventSet::IN));
    }
}

/// Sets the stop flag and kicks every vCPU out of KVM_RUN until all threads
/// have ended, and hands the vCPUs back. None if some did not end in time.
fn stop_vcpus(stop: &AtomicBool, handles: Vec<VcpuHandle>) -> Option<Vec<Vcpu>> {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handles.iter().any(|h| !h.is_finished()) {
        if Instant::now() > deadline {
            return None;
        }
        for h in handles.iter().filter(|h| !h.is_finished()) {
            h.kick();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    handles.into_iter().map(VcpuHandle::join).collect()
}
