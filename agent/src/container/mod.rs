//! One container: its disks mounted by the agent, the rest built by a
//! cloned init in fresh namespaces; started on request, watched until it
//! exits, then torn down.
//!
//! Like youki's libcontainer, each job has its module: `rootfs` and
//! `devices` plan the filesystem, `fsops` runs the plan, `namespaces`
//! clones, `cgroups` limits, `capabilities`/`user`/`process` shape the
//! process, `channel` syncs agent and init, `child` is the init itself.

pub mod capabilities;
pub mod cgroups;
pub mod channel;
pub mod child;
pub mod devices;
pub mod fsops;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod user;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use bulkhead_protocol::{ContainerSpec, ExitStatus, SpecError, Termination};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use thiserror::Error;

use self::capabilities::{capability_sets, CapError};
use self::cgroups::{Cgroup, CgroupError};
use self::channel::Report;
use self::child::ChildContext;
use self::fsops::{apply_all, FsOpError};
use self::namespaces::{clone_flags, clone_process, Forked};
use self::rootfs::{Layout, PlanError};
use crate::reaper::wait_for;
use crate::stdio::Stdio;

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("invalid spec: {0}")]
    Capabilities(#[from] CapError),
    #[error("invalid storage: {0}")]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot prepare the container's filesystems: {0}")]
    Storage(#[from] FsOpError),
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: Errno },
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("container init exited during setup")]
    InitDied,
    #[error("container is {0}")]
    WrongState(&'static str),
    #[error("invalid signal {0}")]
    BadSignal(i32),
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ContainerError {
    move |source| ContainerError::Sys { what, source }
}

/// Agent-wide settings containers are made with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Exited(Termination),
}

#[derive(Debug)]
pub struct Container {
    pid: Pid,
    /// Dropped once the process runs: its end closed at exec.
    channel: Option<OwnedFd>,
    cgroup: Option<Cgroup>,
    layout: Layout,
    volumes: usize,
    pub stdio: Stdio,
    state: State,
}

/// Maps a wait status onto the protocol's termination.
pub fn termination(status: WaitStatus) -> Option<Termination> {
    match status {
        WaitStatus::Exited(_, code) => Some(Termination::Exited { code }),
        WaitStatus::Signaled(_, signal, _) => Some(Termination::Signaled {
            signal: signal as i32,
        }),
        _ => None,
    }
}

impl Container {
    /// Builds the container and leaves its init waiting for [`start`].
    /// On failure nothing is left behind.
    ///
    /// [`start`]: Container::start
    pub fn create(
        id: &str,
        spec: &ContainerSpec,
        settings: &Settings,
    ) -> Result<Container, ContainerError> {
        spec.validate()?;
        // Checked here so a typo fails before anything is built; the child
        // computes the final sets once it knows the uid.
        capability_sets(spec.process.capabilities.as_deref(), 0)?;
        let layout = Layout::new(&settings.state_dir, id);
        let plan = rootfs::plan(&spec.storage, &layout, settings.cgroup_root.is_some())?;

        let cgroup = match &settings.cgroup_root {
            Some(root) => Some(Cgroup::create(root, id, &spec.resources)?),
            None => None,
        };
        let result = apply_all(&plan.storage)
            .map_err(ContainerError::from)
            .and_then(|()| Self::spawn(spec, &layout, &plan.container, cgroup.as_ref()));
        match result {
            Ok((pid, channel, stdio)) => Ok(Container {
                pid,
                channel: Some(channel),
                cgroup,
                layout,
                volumes: spec.storage.volumes.len(),
                stdio,
                state: State::Created,
            }),
            Err(e) => {
                if let Some(c) = cgroup {
                    c.remove();
                }
                layout.teardown(spec.storage.volumes.len());
                Err(e)
            }
        }
    }

    fn spawn(
        spec: &ContainerSpec,
        layout: &Layout,
        plan: &[fsops::FsOp],
        cgroup: Option<&Cgroup>,
    ) -> Result<(Pid, OwnedFd, Stdio), ContainerError> {
        let (ours, theirs) = channel::pair().map_err(sys("cannot create the setup channel"))?;
        let (stdio, child_stdio) = if spec.process.terminal {
            (None, None)
        } else {
            let (s, c) = Stdio::pipes().map_err(sys("cannot create stdio pipes"))?;
            (Some(s), Some(c))
        };
        let ctx = ChildContext {
            spec,
            plan,
            rootfs: layout.rootfs(),
            cgroup_procs: cgroup.map(Cgroup::procs_file),
            channel: theirs,
            stdio: child_stdio,
        };
        // SAFETY: the agent is single-threaded, and the child ends in exec
        // or _exit inside `child::run`.
        let pid = match unsafe { clone_process(clone_flags()) }
            .map_err(sys("cannot create the container init"))?
        {
            Forked::Child => child::run(ctx),
            Forked::Parent(pid) => pid,
        };
        // Close our copies of the child's ends, or EOF would never come.
        drop(ctx);

        let fail = |e: ContainerError| {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = wait_for(pid);
            e
        };
        let report = channel::recv_report(ours.as_fd())
            .map_err(sys("cannot read the container init's report"))
            .map_err(fail)?;
        let stdio = match (report, stdio) {
            (Report::Ready(_), Some(pipes)) => pipes,
            (Report::Ready(Some(master)), None) => Stdio::pty(master)
                .map_err(sys("cannot set up the terminal"))
                .map_err(fail)?,
            (Report::Ready(None), None) => {
                return Err(fail(ContainerError::Setup("no terminal received".into())))
            }
            (Report::Failed(msg), _) => return Err(fail(ContainerError::Setup(msg))),
            (Report::Closed, _) => return Err(fail(ContainerError::InitDied)),
        };
        Ok((pid, ours, stdio))
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn is_started(&self) -> bool {
        self.state != State::Created
    }

    pub fn has_exited(&self) -> bool {
        matches!(self.state, State::Exited(_))
    }

    /// Lets the init exec the process. Returns once it has exec'd (or
    /// failed to, which the process reports itself with 127/126).
    pub fn start(&mut self) -> Result<Pid, ContainerError> {
        match self.state {
            State::Created => {}
            State::Running => return Err(ContainerError::WrongState("already started")),
            State::Exited(_) => return Err(ContainerError::WrongState("already exited")),
        }
        let channel = self
            .channel
            .take()
            .ok_or(ContainerError::WrongState("not startable"))?;
        channel::send_start(channel.as_fd()).map_err(|_| ContainerError::InitDied)?;
        match channel::recv_report(channel.as_fd())
            .map_err(sys("cannot read the container init's report"))?
        {
            Report::Closed => {
                self.state = State::Running;
                Ok(self.pid)
            }
            Report::Failed(msg) => Err(ContainerError::Setup(msg)),
            Report::Ready(_) => Err(ContainerError::Setup(
                "unexpected second ready report".into(),
            )),
        }
    }

    /// Forwards a signal to the process. Signals racing with its exit are
    /// dropped silently.
    pub fn signal(&self, signal: i32) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::BadSignal(signal))?;
        if self.state != State::Running {
            return Ok(());
        }
        match kill(self.pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(sys("cannot signal the container")(e)),
        }
    }

    /// Records the reaped status of the container's init.
    pub fn set_exited(&mut self, status: WaitStatus) {
        if let Some(t) = termination(status) {
            self.state = State::Exited(t);
        }
    }

    /// The final status, once the process exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.state {
            State::Exited(termination) => Some(ExitStatus {
                termination,
                oom_killed: self.cgroup.as_ref().is_some_and(Cgroup::oom_killed),
            }),
            _ => None,
        }
    }

    /// Kills the container (if still alive), reaps it and removes its
    /// cgroup and mount points.
    pub fn destroy(mut self) {
        if !self.has_exited() {
            let _ = kill(self.pid, Signal::SIGKILL);
            if let Ok(status) = wait_for(self.pid) {
                self.set_exited(status);
            }
        }
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
        self.layout.teardown(self.volumes);
    }
}
