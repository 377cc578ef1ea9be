//! A further process in a started container (`Exec` on a side
//! connection), as `runc exec` makes one: it joins the init's cgroup and
//! namespaces, whose mount namespace gives it the container's root (with
//! its masked and read-only paths; the sysctls are the namespaces'), then
//! takes the init's own last steps (terminal, stdio, rlimits,
//! capabilities, user, cwd, seccomp filter, exec) on a [`Launch`]
//! prepared from the container's spec with its own process.
//!
//! It is spawned the way the init is (see `spawn`): in the agent's memory,
//! on the init's stack (free again once the init has exec'd), without
//! allocating. A pid namespace cannot be entered by the process itself
//! (`setns` only sets the namespace of its future children), so the agent
//! points its own children's pid namespace at the container's around the
//! clone and back; the other namespaces the child joins from inside with
//! one `setns` on a pidfd of the init.

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::path::PathBuf;

use bulkhead_protocol::{ExitStatus, ProcessSpec, SpecError, Termination};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use thiserror::Error;

use super::channel::{self, Failure};
use super::child::{self, ChildError, Step};
use super::launch::Launch;
use super::namespaces::{pidfd_open, EXEC_JOINED};
use super::spawn::{spawn, Stack};
use super::{collect_reports_with, termination, Container, ContainerError};
use crate::log::agent_log;
use crate::reaper::Reaper;
use crate::stdio::Stdio;

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("container is not running")]
    NotRunning,
    /// The new process would freeze on joining the cgroup while the agent
    /// waits for it to exec.
    #[error("container is frozen")]
    Frozen,
    #[error("invalid process: {0}")]
    Spec(#[from] SpecError),
    #[error("cannot exec in the container: {what}: {source}")]
    Sys { what: &'static str, source: Errno },
    #[error("cannot exec in the container: {0}")]
    Setup(#[from] ChildError),
    #[error("cannot exec in the container: {0}")]
    Start(#[from] ContainerError),
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ExecError {
    move |source| ExecError::Sys { what, source }
}

/// The exec'd process's own setup step, numbered past the init's steps in
/// the [`Failure`] it reports.
const STEP_JOIN_NAMESPACES: u32 = 0x100;

/// What the cloned child gets: read-only setup, the init's pidfd, its end
/// of the report channel.
struct ExecArgs<'a> {
    launch: &'a Launch,
    init: RawFd,
    report: RawFd,
}

/// A process exec'd into the container: a child of the agent, living in
/// the container's pid namespace (and dying with it).
#[derive(Debug)]
pub struct Exec {
    pid: Pid,
    pub stdio: Stdio,
    exited: Option<Termination>,
}

impl Exec {
    /// Runs `process` in `container`, which must be running; returns once
    /// the process has exec'd (or failed to, which it reports itself with
    /// 127/126 like the init). The process is watched by `reaper`.
    pub fn spawn(
        container: &Container,
        process: &ProcessSpec,
        stack: &mut Stack,
        reaper: &mut Reaper,
    ) -> Result<Exec, ExecError> {
        let init = container.running_pid().ok_or(ExecError::NotRunning)?;
        if container.cgroup().is_some_and(|c| c.freeze_requested()) {
            return Err(ExecError::Frozen);
        }
        let spec = container.spec_for(process);
        spec.validate()?;
        let init_fd = pidfd_open(init).map_err(|e| match e {
            Errno::ESRCH => ExecError::NotRunning,
            e => sys("cannot open the container init")(e),
        })?;
        let (mut stdio, child_stdio) = if process.terminal {
            (Stdio::awaiting_pty(), None)
        } else {
            let (s, c) = Stdio::pipes().map_err(sys("cannot create stdio pipes"))?;
            (s, Some(c))
        };
        // The container's root as its mount namespace shows it (volumes
        // included): where the user is looked up.
        let root = PathBuf::from(format!("/proc/{init}/root"));
        let procs = container.cgroup().map(|c| c.procs_file());
        let launch = Launch::prepare(&spec, root, Vec::new(), procs.as_deref(), None, child_stdio)?;
        let (ours, theirs) = channel::pair().map_err(sys("cannot create the report channel"))?;
        let mut args = ExecArgs {
            launch: &launch,
            init: init_fd.as_raw_fd(),
            report: theirs.as_raw_fd(),
        };
        let pid = in_pid_namespace(&init_fd, || {
            // SAFETY: `entry` only makes syscalls on data `launch` prepared
            // (no allocation, no unwinding: it ends in exec or _exit); the
            // agent is single-threaded and the stack is free (the init has
            // exec'd).
            unsafe { spawn(stack, CloneFlags::empty(), entry, &mut args) }
        })?;
        reaper.watch(pid);
        // Our copy of the child's end: the channel ends when the child's does.
        drop(theirs);
        let reported =
            collect_reports_with(ours.as_fd(), &launch, &mut stdio, |f| describe(f, &launch));
        // The child is set up: drop our copies of its stdio ends (or output
        // would never reach EOF) and of its cgroup file.
        drop(launch);
        if let Err(e) = reported {
            // It exits by itself after a failed step; this is in case it
            // did not get that far.
            let _ = kill(pid, Signal::SIGKILL);
            reaper.forget(pid);
            return Err(match e {
                ContainerError::Setup(step) => ExecError::Setup(step),
                other => ExecError::Start(other),
            });
        }
        Ok(Exec {
            pid,
            stdio,
            exited: None,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn is_running(&self) -> bool {
        self.exited.is_none()
    }

    /// Forwards a signal to the process; dropped silently once it exited.
    pub fn signal(&self, signal: i32) -> Result<(), ContainerError> {
        let sig = Signal::try_from(signal).map_err(|_| ContainerError::BadSignal(signal))?;
        if !self.is_running() {
            return Ok(());
        }
        match kill(self.pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(source) => Err(ContainerError::Sys {
                what: "cannot signal the process",
                source,
            }),
        }
    }

    /// Records the process's reaped status.
    pub fn set_exited(&mut self, status: WaitStatus) {
        if let Some(t) = termination(status) {
            self.exited = Some(t);
        }
    }

    /// The final status, once the process exited. The cgroup's OOM counter
    /// is the container's, not this process's: `oom_killed` stays false.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exited.map(|termination| ExitStatus {
            termination,
            oom_killed: false,
        })
    }

    /// Kills the process if it still runs and leaves its status to be
    /// dropped when reaped: nobody will ask for it.
    pub fn abandon(self, reaper: &mut Reaper) {
        // Only while it is unreaped is the pid surely still this process.
        if reaper.take(self.pid).is_none() && self.is_running() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
        reaper.forget(self.pid);
    }
}

/// Runs `clone` with the agent's children going into the pid namespace of
/// `init`, then points them back at the agent's own.
fn in_pid_namespace(
    init: &OwnedFd,
    clone: impl FnOnce() -> Result<Pid, Errno>,
) -> Result<Pid, ExecError> {
    let ours = pidfd_open(Pid::this()).map_err(sys("cannot open the agent's pidfd"))?;
    setns(init.as_fd(), CloneFlags::CLONE_NEWPID).map_err(|e| match e {
        // The init has exited (a zombie has no namespaces left).
        Errno::ESRCH => ExecError::NotRunning,
        e => sys("cannot enter the container's pid namespace")(e),
    })?;
    let cloned = clone();
    if let Err(e) = setns(ours.as_fd(), CloneFlags::CLONE_NEWPID) {
        // Every later container init would be nested in this container's
        // pid namespace; nothing better to do than say so.
        agent_log!("cannot return to the agent's pid namespace: {e}");
    }
    cloned.map_err(|e| match e {
        // The namespace's init is gone: it accepts no new processes.
        Errno::ENOMEM => ExecError::NotRunning,
        e => sys("cannot create the process")(e),
    })
}

/// The agent's reading of the child's `failure`.
fn describe(failure: &Failure, launch: &Launch) -> ContainerError {
    if failure.step == STEP_JOIN_NAMESPACES {
        return ContainerError::Sys {
            what: "cannot join the container's namespaces",
            source: Errno::from_raw(failure.errno),
        };
    }
    child::describe(failure, launch).into()
}

fn failed(step: u32, errno: Errno) -> Failure {
    Failure {
        step,
        index: 0,
        errno: errno as i32,
    }
}

/// The child's entry point (on the init's stack, see `spawn`).
extern "C" fn entry(arg: *mut c_void) -> c_int {
    // SAFETY: `Exec::spawn` passes its `ExecArgs` and stays suspended
    // (CLONE_VFORK) until we exec or exit.
    let args = unsafe { &*arg.cast::<ExecArgs<'_>>() };
    let failure = match setup_and_exec(args) {
        Err(f) => f,
        Ok(never) => match never {},
    };
    let _ = channel::send_failure(args.report, &failure);
    // SAFETY: _exit skips atexit handlers and destructors, which belong to
    // the agent, whose memory this still is.
    unsafe { libc::_exit(1) }
}

fn setup_and_exec(args: &ExecArgs<'_>) -> Result<Infallible, Failure> {
    let l = args.launch;
    // As for the init: modes (of a created cwd) are exact until the
    // process's own umask is set.
    umask(Mode::empty());
    // Before the cgroup namespace: joining needs both groups visible.
    if let Some(procs) = &l.cgroup_procs {
        child::write_all(procs.as_raw_fd(), b"0")
            .map_err(|e| failed(Step::JoinCgroup as u32, e))?;
    }
    // SAFETY: setns takes a descriptor and flags by value.
    if unsafe { libc::setns(args.init, EXEC_JOINED.bits()) } != 0 {
        return Err(failed(STEP_JOIN_NAMESPACES, Errno::last()));
    }
    let tty = if l.terminal {
        Some(child::open_terminal(l, args.report)?)
    } else {
        None
    };
    // The init's seccomp filter too (installed in `become_process`, or
    // after it with no_new_privileges).
    child::become_process(l, tty)?;
    child::install_late_seccomp(l)?;
    child::exec_or_exit(l)
}
