//! start: the created container's process runs; its output is pumped
//! until it exits, then the VM ends.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_protocol::{AgentWriter, ExitStatus, GuestTimes, StepTime};

use anyhow::bail;

use super::agent::Session;
use super::boot::{Boot, Booted};
use super::control::{self, Request};
use super::create::Created;
use super::kill_deadline::KillDeadline;
use super::state::{Locked, Record, Status};

/// Starts a container made by `create_detached`: its monitor runs the
/// process. Returns the updated record.
pub fn start(c: &Locked) -> anyhow::Result<Record> {
    let mut record = c.current()?;
    match record.status {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        Status::Running | Status::Paused => bail!("cannot start an already running container"),
        Status::Creating => bail!("container {} is still being created", c.id()),
    }
    control::send(c.dir(), Request::Start)?;
    record.status = Status::Running;
    c.save(&record)?;
    Ok(record)
}

/// A container whose process runs.
pub struct Running {
    booted: Booted,
    session: Session,
    deadline: Option<KillDeadline>,
}

impl Created {
    /// Runs the container's process.
    pub fn start(self) -> anyhow::Result<Running> {
        let Created { booted, pending } = self;
        match pending.start() {
            Ok(session) => Ok(Running {
                booted,
                session,
                deadline: None,
            }),
            Err(e) => Err(booted.explain(e)),
        }
    }
}

impl Running {
    /// A handle other threads use to send stdin and signals.
    pub fn writer(&self) -> Arc<Mutex<AgentWriter<UnixStream>>> {
        self.session.writer()
    }

    /// The deadline a SIGKILL arms, for the thread serving `kill`; the
    /// wait below honours it.
    pub fn kill_deadline(&mut self) -> std::io::Result<KillDeadline> {
        let deadline = KillDeadline::new(self.session.socket()?);
        self.deadline = Some(deadline.clone());
        Ok(deadline)
    }

    /// Copies the process's output to our stdout/stderr until it exits;
    /// calls `on_output` at its first byte. A lost guest ends the VM and
    /// says why; a SIGKILL whose deadline passed is death by SIGKILL.
    pub fn wait(&mut self, on_output: impl FnMut()) -> Result<ExitStatus, anyhow::Error> {
        let result = self.session.pump_output(on_output);
        match &self.deadline {
            Some(deadline) if result.is_err() && deadline.forced() => Ok(ExitStatus {
                termination: bulkhead_protocol::Termination::Signaled {
                    signal: libc::SIGKILL,
                },
                oom_killed: false,
            }),
            Some(deadline) => {
                deadline.exited();
                result
            }
            None => result,
        }
    }

    /// Ends a run whose wait failed, explaining the failure.
    pub fn fail(self, e: anyhow::Error) -> anyhow::Error {
        self.booted.explain(e)
    }

    pub fn boot(&self) -> &Boot {
        &self.booted.boot
    }

    pub fn guest_times(&self) -> Option<(GuestTimes, Instant)> {
        self.session.guest_times()
    }

    pub fn steps(&self) -> &[StepTime] {
        self.session.steps()
    }

    pub fn run_started(&self) -> Option<Instant> {
        self.booted.vm.run_started()
    }

    /// The VMM's process (`None`: this one).
    pub fn vmm_pid(&self) -> Option<u32> {
        self.booted.vm.vmm_pid()
    }

    /// Ends the VM once the process has exited. Once the agent has flushed
    /// the volumes nothing in the guest is worth a clean shutdown: the
    /// host ends the VM rather than the guest's slow reboot path.
    pub fn end(self) -> Result<(), super::vm::VmError> {
        let Running {
            booted,
            session,
            deadline,
        } = self;
        let result = if deadline.as_ref().is_some_and(|d| d.forced()) {
            // The guest did not kill in time; it gets no say now.
            booted.vm.kill()
        } else if session.shutdown() || deadline.is_some_and(|d| d.expired()) {
            // Flushed, or out of SIGKILL's time for it.
            booted.vm.kill()
        } else {
            booted.vm.finish(Duration::from_secs(10))
        };
        drop(booted.shares);
        result
    }
}
