//! The container's microVM while it runs: in its own jailed process (see
//! `crate::jail`), or with `--jail off` on a thread of this one. Either
//! way the CLI talks to the agent meanwhile.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_vmm::builder::BuildError;
use bulkhead_vmm::vmm::{RunError, StopHandle, VmExit, Vmm};

use super::vm_spec::{VmFiles, VmSpec};
use crate::confine::{self, JailMode};
use crate::jail::{JailError, JailedVm};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Confine(anyhow::Error),
}

impl StartError {
    /// Whether a restore failed because of the template itself (stale,
    /// corrupt, from another host) rather than this container's inputs.
    pub fn is_template_fault(&self) -> bool {
        match self {
            StartError::Build(e) => e.is_snapshot_fault(),
            StartError::Jail(e) => e.is_template_fault(),
            StartError::Confine(_) => false,
        }
    }
}

/// How the VM failed while it ran.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Jail(#[from] JailError),
}

/// Stops a running VM from any thread (a signal, a dead virtiofsd).
#[derive(Clone)]
pub enum VmStop {
    Thread(StopHandle),
    Jailed(Arc<File>),
}

impl VmStop {
    pub fn stop(&self) {
        match self {
            VmStop::Thread(h) => h.stop(),
            VmStop::Jailed(control) => crate::jail::launch::stop(control),
        }
    }
}

impl From<StopHandle> for VmStop {
    fn from(h: StopHandle) -> Self {
        VmStop::Thread(h)
    }
}

pub struct RunningVm(Backend);

enum Backend {
    Thread(ThreadVm),
    Jailed(JailedVm),
}

impl RunningVm {
    /// Builds (or restores) `spec`'s VM and starts its vCPUs; `run_dir`
    /// is the container's directory, where its sockets are.
    pub fn start(spec: &VmSpec, files: VmFiles, run_dir: &Path) -> Result<RunningVm, StartError> {
        match confine::jail() {
            JailMode::On => Ok(RunningVm(Backend::Jailed(JailedVm::launch(
                spec, files, run_dir,
            )?))),
            JailMode::Off => {
                let seccomp = confine::vmm_filters().map_err(StartError::Confine)?;
                let vmm = spec.config(files, seccomp).build()?;
                let vm = ThreadVm::launch(vmm).map_err(BuildError::EventFd)?;
                Ok(RunningVm(Backend::Thread(vm)))
            }
        }
    }

    /// When the vCPUs were started: their first KVM_RUN follows within
    /// microseconds.
    pub fn run_started(&self) -> Option<Instant> {
        match &self.0 {
            Backend::Thread(t) => t.run_started.get().copied(),
            Backend::Jailed(j) => Some(j.run_started()),
        }
    }

    /// The process holding the guest's memory: `None` for this one.
    pub fn vmm_pid(&self) -> Option<u32> {
        match &self.0 {
            Backend::Thread(_) => None,
            Backend::Jailed(j) => Some(j.pid()),
        }
    }

    pub fn stopper(&self) -> VmStop {
        match &self.0 {
            Backend::Thread(t) => VmStop::Thread(t.stop.clone()),
            Backend::Jailed(j) => VmStop::Jailed(j.stopper()),
        }
    }

    pub fn has_ended(&self) -> bool {
        match &self.0 {
            Backend::Thread(t) => t.has_ended(),
            Backend::Jailed(j) => j.has_ended(),
        }
    }

    /// Ends the VM now: the guest has nothing left worth a clean shutdown.
    pub fn kill(self) -> Result<(), VmError> {
        self.finish(Duration::ZERO)
    }

    /// Waits up to `grace` for the guest to power off by itself, then stops
    /// it. Returns whether it ended well.
    pub fn finish(self, grace: Duration) -> Result<(), VmError> {
        match self.0 {
            Backend::Thread(t) => t.finish(grace).map(drop).map_err(Into::into),
            Backend::Jailed(j) => j.finish(grace).map_err(Into::into),
        }
    }
}

/// The VMM on a thread of this process.
struct ThreadVm {
    thread: Option<JoinHandle<Result<VmExit, RunError>>>,
    stop: StopHandle,
    /// When the VMM thread started the vCPUs.
    run_started: Arc<OnceLock<Instant>>,
}

impl ThreadVm {
    fn launch(vmm: Vmm) -> std::io::Result<ThreadVm> {
        let stop = vmm.stop_handle();
        let run_started = Arc::new(OnceLock::new());
        let started = run_started.clone();
        let thread = std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || {
                let _ = started.set(Instant::now());
                vmm.run()
            })?;
        Ok(ThreadVm {
            thread: Some(thread),
            stop,
            run_started,
        })
    }

    fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn finish(mut self, grace: Duration) -> Result<VmExit, RunError> {
        let deadline = Instant::now() + grace;
        while !self.has_ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.has_ended() {
            self.stop.stop();
        }
        self.join()
    }

    fn join(&mut self) -> Result<VmExit, RunError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Ok(VmExit::Stopped),
        }
    }
}

impl Drop for ThreadVm {
    /// A VM never outlives the command that started it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
            let _ = self.join();
        }
    }
}
