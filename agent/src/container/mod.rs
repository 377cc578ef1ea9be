//! One container: its disks mounted by the agent, the rest built by an
//! init spawned in fresh namespaces; started on request, watched until it
//! exits, then torn down.
//!
//! Like youki's libcontainer, each job has its module: `rootfs` and
//! `devices` plan the filesystem (`mount_options` reads a volume's
//! options, `subpath` finds a volume's sub-path), `disk` waits for late
//! disks, `fsops` runs the plan, `cgroups` limits, `launch` prepares
//! everything the init needs, `spawn` creates it without copying the
//! agent, `channel` carries its reports back, `child` is the init itself,
//! `capabilities`/`user`/`process` shape the process, `sysctl`, `masks`
//! and `seccomp` confine it, `exec` runs further processes in a started
//! container.

pub mod capabilities;
pub mod cgroups;
pub mod channel;
pub mod child;
pub mod copyup;
pub mod devices;
pub mod disk;
pub mod exec;
pub mod fsops;
pub mod launch;
pub mod masks;
pub mod mount_options;
pub mod namespaces;
pub mod network;
pub mod prepared;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod subpath;
pub mod sysctl;
pub mod user;

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_protocol::{ContainerSpec, ExitStatus, ProcessSpec, SpecError, StepTime, Termination};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use thiserror::Error;

use self::capabilities::{capability_sets, CapError};
use self::cgroups::{Cgroup, CgroupError};
use self::channel::{Failure, Report};
use self::child::{ChildArgs, ChildError, Marks};
use self::fsops::{step_name, FsOpError};
use self::launch::Launch;
use self::namespaces::{clone_flags, pid_namespace_members};
use self::network::NetworkSetupError;
use self::prepared::Prepared;
use self::rootfs::{Layout, PlanError};
use self::spawn::{spawn, Stack};
use crate::reaper::Reaper;
use crate::stdio::Stdio;
use crate::trace::{step, Mark, Trace};

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
    Setup(#[from] ChildError),
    #[error("container init died during setup")]
    InitDied,
    #[error("container init opened no terminal")]
    NoTerminal,
    #[error("container is {0}")]
    WrongState(&'static str),
    #[error("invalid signal {0}")]
    BadSignal(i32),
    #[error("no cgroup to freeze")]
    NoCgroup,
    #[error("cannot list the container's processes: {0}")]
    ListProcesses(std::io::Error),
    #[error(transparent)]
    Network(#[from] NetworkSetupError),
}

/// How long Freeze waits for the cgroup to report the new state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ContainerError {
    move |source| ContainerError::Sys { what, source }
}

/// Agent-wide settings containers are made with.
/// The network namespace the init joins: the prepared one, or (when the
/// container has an interface to be given before it starts) a new one;
/// `None` lets the clone make an empty one. The interface is configured in
/// it here, before the init exists.
fn network_namespace(
    spec: &ContainerSpec,
    prepared: &mut Prepared,
) -> Result<Option<std::os::fd::OwnedFd>, ContainerError> {
    let netns = prepared.take_netns();
    let Some(net) = &spec.network else {
        return Ok(netns);
    };
    let netns = match netns {
        Some(ns) => ns,
        None => prepared::make_netns().map_err(|e| ContainerError::Sys {
            what: "cannot create the container's network namespace",
            source: e,
        })?,
    };
    network::configure(net, netns.as_fd())?;
    Ok(Some(netns))
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
}

#[derive(Debug)]
enum State {
    /// Built; the init is prepared but not spawned.
    Created(Box<Launch>),
    Running(Pid),
    Exited(Pid, Termination),
}

#[derive(Debug)]
pub struct Container {
    /// Unique among the agent's containers: what side connections name
    /// the container they were opened on by.
    id: String,
    /// What processes exec'd into the container start from: its settings,
    /// with their own process in place of the init's.
    spec: Box<ContainerSpec>,
    state: State,
    cgroup: Option<Cgroup>,
    layout: Layout,
    volumes: usize,
    /// Mount points of the writable volumes: what Shutdown flushes.
    writable_volumes: Vec<PathBuf>,
    pub stdio: Stdio,
    /// Steps so far, reported with Started (then with Exit).
    trace: Trace,
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
    /// Mounts the container's storage, makes its cgroup and prepares its
    /// init, which [`start`] spawns. On failure nothing is left behind.
    ///
    /// [`start`]: Container::start
    pub fn create(
        id: &str,
        spec: &ContainerSpec,
        settings: &Settings,
        prepared: &mut Prepared,
    ) -> Result<Container, ContainerError> {
        let mut trace = Trace::start();
        spec.validate()?;
        // Checked here so a typo fails before anything is built; `launch`
        // computes the final sets once it knows the uid.
        capability_sets(spec.process.capabilities.as_deref(), 0)?;
        let layout = Layout::new(&settings.state_dir, id);
        let mut plan = rootfs::plan(&spec.storage, &layout, settings.cgroup_root.is_some())?;
        trace.mark("plan");

        let cgroup = match (&settings.cgroup_root, prepared.take_cgroup()) {
            (Some(_), Some(spare)) => Some(Cgroup::adopt(spare, &spec.resources)?),
            (Some(root), None) => Some(Cgroup::create(root, id, &spec.resources)?),
            (None, _) => None,
        };
        if cgroup.is_some() {
            trace.mark("cgroup");
        }
        let result = (|| {
            for op in &plan.storage {
                op.apply()?;
                if let Some(name) = step_name(op) {
                    trace.mark(&name);
                }
            }
            // Both need the root and the volumes mounted: links are
            // followed and a sub-path's kind is looked up.
            plan.confine_mount_points()?;
            let container_plan = plan.container(subpath::resolve)?;
            let (stdio, child_stdio) = if spec.process.terminal {
                (Stdio::awaiting_pty(), None)
            } else {
                let (s, c) = Stdio::pipes().map_err(sys("cannot create stdio pipes"))?;
                (s, Some(c))
            };
            let netns = network_namespace(spec, prepared)?;
            if let Some(files) = spec.network.as_ref().and_then(|n| n.files.as_ref()) {
                network::write_files(&layout.rootfs(), files)?;
            }
            let launch = Launch::prepare(
                spec,
                layout.rootfs(),
                container_plan,
                cgroup.as_ref().map(Cgroup::procs_file).as_deref(),
                netns,
                child_stdio,
            )?;
            trace.mark("prepare");
            Ok::<_, ContainerError>((launch, stdio))
        })();
        match result {
            Ok((launch, stdio)) => Ok(Container {
                id: id.to_string(),
                spec: Box::new(spec.clone()),
                state: State::Created(Box::new(launch)),
                cgroup,
                writable_volumes: rootfs::writable_volumes(&spec.storage, &layout),
                layout,
                volumes: spec.storage.volumes.len(),
                stdio,
                trace,
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

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's spec with `process` as its process: the base of a
    /// process exec'd into it.
    pub fn spec_for(&self, process: &ProcessSpec) -> ContainerSpec {
        ContainerSpec {
            process: process.clone(),
            ..(*self.spec).clone()
        }
    }

    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The init's pid while it runs (started, not exited).
    pub fn running_pid(&self) -> Option<Pid> {
        match self.state {
            State::Running(pid) => Some(pid),
            _ => None,
        }
    }

    /// The init's pid, once spawned.
    pub fn pid(&self) -> Option<Pid> {
        match self.state {
            State::Created(_) => None,
            State::Running(pid) | State::Exited(pid, _) => Some(pid),
        }
    }

    pub fn is_started(&self) -> bool {
        !matches!(self.state, State::Created(_))
    }

    pub fn has_exited(&self) -> bool {
        matches!(self.state, State::Exited(..))
    }

    /// Spawns the init, which sets up the namespaces and execs the
    /// process. Returns once it has exec'd (or failed to, which the process
    /// reports itself with 127/126), with the steps since Create began.
    /// The init is watched by `reaper` from its spawn on.
    pub fn start(
        &mut self,
        stack: &mut Stack,
        reaper: &mut Reaper,
    ) -> Result<(Pid, Vec<StepTime>), ContainerError> {
        let launch = match &self.state {
            State::Created(launch) => launch,
            State::Running(_) => return Err(ContainerError::WrongState("already started")),
            State::Exited(..) => return Err(ContainerError::WrongState("already exited")),
        };
        // The time between Created and Start is the host's.
        self.trace.restart();
        let (ours, theirs) = channel::pair().map_err(sys("cannot create the report channel"))?;
        let mut args = ChildArgs {
            launch,
            report: theirs.as_raw_fd(),
            marks: Marks::default(),
        };
        let before = Mark::now();
        // SAFETY: `child::entry` only makes syscalls on data `launch`
        // prepared and writes `args.marks`: no allocation, no unwinding
        // (it ends in exec or _exit); the agent is single-threaded.
        let flags = clone_flags(launch.netns.is_none());
        let spawned = unsafe { spawn(stack, flags, child::entry, &mut args) };
        let resumed = Mark::now();
        let marks = args.marks;
        // Our copy of the init's end: the channel ends when the init's does.
        drop(theirs);
        let pid = spawned.map_err(sys("cannot create the container init"))?;
        reaper.watch(pid);
        record_spawn(&mut self.trace, before, &marks, resumed);

        let reached_exec = marks
            .recorded()
            .last()
            .is_some_and(|(n, _)| *n == LAST_MARK);
        let result = collect_reports(ours.as_fd(), launch, &mut self.stdio);
        // The init's setup is over: drop the agent's copies of its stdio
        // ends (or output would never reach EOF) and of its cgroup file.
        self.state = State::Running(pid);
        result?;
        if !reached_exec {
            return Err(ContainerError::InitDied);
        }
        self.trace.mark("report");
        let steps = self.trace.take();
        Ok((pid, steps))
    }

    /// Forwards a signal to the process. Signals racing with its exit are
    /// dropped silently.
    pub fn signal(&self, signal: i32) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::BadSignal(signal))?;
        let State::Running(pid) = self.state else {
            return Ok(());
        };
        match kill(pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(sys("cannot signal the container")(e)),
        }
    }

    /// Sends `signal` to every process of the container: through its
    /// cgroup, or without one to every process of its pid namespace.
    pub fn signal_all(&self, signal: i32) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::BadSignal(signal))?;
        if self.running_pid().is_none() {
            return Ok(());
        }
        if let Some(cgroup) = &self.cgroup {
            return Ok(cgroup.signal_all(sig)?);
        }
        for pid in self.processes()? {
            match kill(Pid::from_raw(pid as i32), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(sys("cannot signal the container")(e)),
            }
        }
        Ok(())
    }

    /// The pids (the agent's view) of every process in the container: its
    /// cgroup's, or without a cgroup those of its pid namespace. Empty
    /// before the start.
    pub fn processes(&self) -> Result<Vec<u32>, ContainerError> {
        if let Some(cgroup) = &self.cgroup {
            return Ok(cgroup.processes()?);
        }
        match self.state {
            State::Running(pid) => match pid_namespace_members(pid) {
                Ok(pids) => Ok(pids),
                // The init exited meanwhile: nothing is left.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(ContainerError::ListProcesses(e)),
            },
            State::Created(_) | State::Exited(..) => Ok(Vec::new()),
        }
    }

    /// Freezes or thaws the running container's processes, returning once
    /// its cgroup reports them so.
    pub fn freeze(&self, frozen: bool) -> Result<(), ContainerError> {
        if self.running_pid().is_none() {
            return Err(ContainerError::WrongState("not running"));
        }
        let cgroup = self.cgroup.as_ref().ok_or(ContainerError::NoCgroup)?;
        Ok(cgroup.freeze(frozen, FREEZE_TIMEOUT)?)
    }

    /// Records the reaped status of the container's init.
    pub fn set_exited(&mut self, status: WaitStatus) {
        if let (Some(pid), Some(t)) = (self.pid(), termination(status)) {
            if !self.has_exited() {
                self.trace.mark("wait");
            }
            self.state = State::Exited(pid, t);
        }
    }

    /// The final status, once the process exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.state {
            State::Exited(_, termination) => Some(ExitStatus {
                termination,
                oom_killed: self.cgroup.as_ref().is_some_and(Cgroup::oom_killed),
            }),
            _ => None,
        }
    }

    /// The steps since the process started: `wait` (until it was reaped)
    /// and `drain` (forwarding the rest of its output), for the Exit reply.
    pub fn exit_steps(&mut self) -> Vec<StepTime> {
        self.trace.mark("drain");
        self.trace.take()
    }

    /// Kills the process if still alive and reaps it (its pid namespace,
    /// and so every process of the container, dies with it). Statuses of
    /// exec'd processes reaped meanwhile stay with `reaper`.
    pub fn stop(&mut self, reaper: &mut Reaper) {
        if let State::Running(pid) = self.state {
            let _ = kill(pid, Signal::SIGKILL);
            if let Some(status) = reaper.wait_for(pid) {
                self.set_exited(status);
            }
        }
    }

    /// Flushes the writable volumes (syncfs on each, nothing else: the
    /// scratch disk and the image are thrown away with the VM). Stop the
    /// container first, or it may write on after the flush.
    pub fn flush_volumes(&self) -> Result<(), ContainerError> {
        for dir in &self.writable_volumes {
            let f = std::fs::File::open(dir).map_err(|e| {
                sys("cannot open a volume to flush it")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
            // SAFETY: syncfs on a descriptor we own.
            if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                return Err(sys("cannot flush a volume")(Errno::last()));
            }
        }
        Ok(())
    }

    /// Stops the container and removes its cgroup and mount points.
    pub fn destroy(mut self, reaper: &mut Reaper) {
        self.stop(reaper);
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
        self.layout.teardown(self.volumes);
    }
}

/// The clone, the init's own marks (its clock is ours; its faults are
/// its own) and the exec, ending when the agent resumed.
fn record_spawn(trace: &mut Trace, before: Mark, marks: &Marks, resumed: Mark) {
    trace.push(StepTime {
        name: "clone".into(),
        ns: marks.begin.ns.saturating_sub(before.ns),
        faults: marks.begin.faults,
    });
    let mut prev = marks.begin;
    for (name, at) in marks.recorded() {
        trace.push(step(name, prev, *at));
        prev = *at;
    }
    // The exec's faults land in the new image, which we cannot see.
    trace.push(StepTime {
        name: "exec".into(),
        ns: resumed.ns.saturating_sub(prev.ns),
        faults: 0,
    });
    trace.restart_at(resumed);
}

/// The init's last mark before its exec.
const LAST_MARK: &str = "init:creds";

/// Reads the init's reports until its channel closes: the pty master (with
/// a terminal), or the failure of a setup step.
fn collect_reports(
    channel: std::os::fd::BorrowedFd<'_>,
    launch: &Launch,
    stdio: &mut Stdio,
) -> Result<(), ContainerError> {
    collect_reports_with(channel, launch, stdio, |f| {
        child::describe(f, launch).into()
    })
}

/// [`collect_reports`] with the reading of failures left to `describe`
/// (an exec'd process has setup steps of its own).
fn collect_reports_with(
    channel: std::os::fd::BorrowedFd<'_>,
    launch: &Launch,
    stdio: &mut Stdio,
    describe: impl Fn(&Failure) -> ContainerError,
) -> Result<(), ContainerError> {
    let mut got_pty = false;
    loop {
        match channel::recv_report(channel)
            .map_err(sys("cannot read the container init's report"))?
        {
            Report::Pty(master) => {
                stdio
                    .attach_pty(master)
                    .map_err(sys("cannot set up the terminal"))?;
                got_pty = true;
            }
            Report::Failed(f) => return Err(describe(&f)),
            Report::Garbled => return Err(ChildError::Garbled.into()),
            Report::Closed => break,
        }
    }
    if launch.terminal && !got_pty {
        return Err(ContainerError::NoTerminal);
    }
    Ok(())
}
