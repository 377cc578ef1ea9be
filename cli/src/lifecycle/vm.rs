//! The container's microVM, run by the VMM library on its own thread while
//! the CLI talks to the agent.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_vmm::builder::{BuildError, RestoreConfig};
use bulkhead_vmm::config::VmConfig;
use bulkhead_vmm::vmm::{RunError, StopHandle, VmExit, Vmm};

pub struct RunningVm {
    thread: Option<JoinHandle<Result<VmExit, RunError>>>,
    stop: StopHandle,
    /// When the VMM thread started the vCPUs.
    run_started: Arc<OnceLock<Instant>>,
}

impl RunningVm {
    /// Builds the VM and starts its vCPUs.
    pub fn start(config: VmConfig) -> anyhow::Result<RunningVm> {
        Ok(Self::launch(bulkhead_vmm::builder::build(config)?)?)
    }

    /// Restores the VM from a snapshot and lets its vCPUs continue.
    pub fn restore(config: RestoreConfig) -> Result<RunningVm, BuildError> {
        let vmm = bulkhead_vmm::builder::restore(config)?;
        Self::launch(vmm).map_err(BuildError::EventFd)
    }

    fn launch(vmm: Vmm) -> std::io::Result<RunningVm> {
        let stop = vmm.stop_handle();
        let run_started = Arc::new(OnceLock::new());
        let started = run_started.clone();
        let thread = std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || {
                let _ = started.set(Instant::now());
                vmm.run()
            })?;
        Ok(RunningVm {
            thread: Some(thread),
            stop,
            run_started,
        })
    }

    /// When the vCPUs were started: their first KVM_RUN follows within
    /// microseconds.
    pub fn run_started(&self) -> Option<Instant> {
        self.run_started.get().copied()
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    pub fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Ends the VM now: the guest has nothing left worth a clean shutdown.
    pub fn kill(self) -> Result<VmExit, RunError> {
        self.finish(Duration::ZERO)
    }

    /// Waits up to `grace` for the guest to power off by itself, then stops
    /// it. Returns how the VM ended.
    pub fn finish(mut self, grace: Duration) -> Result<VmExit, RunError> {
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

impl Drop for RunningVm {
    /// A VM never outlives the command that started it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
            let _ = self.join();
        }
    }
}
