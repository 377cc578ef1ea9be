//! The container's init: runs in the cloned child, inside the new
//! namespaces. It mounts /proc, /sys, /dev and the volumes into the root
//! the agent prepared, pivots into it, reports ready, waits for Start,
//! then becomes the container's process.
//!
//! Setup failures go back to the agent over the channel and become the
//! reply to CreateContainer or Start; exec failures are the process's own
//! (message on its stderr, exit 127/126).

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use bulkhead_protocol::{ContainerSpec, User};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use thiserror::Error;

use super::capabilities::{
    apply_process_sets, capability_sets, drop_bounding, CapError, CapabilitySets,
};
use super::channel;
use super::fsops::{apply_all, FsOp, FsOpError};
use super::namespaces::loopback_up;
use super::process::{
    apply_rlimits, complete_env, env_value, exec, inherit_tunables, switch_user, ProcessError,
    DEFAULT_PATH, GLIBC_TUNABLES,
};
use super::rootfs::{enter, make_private, PivotError};
use super::user::{resolve, ResolvedUser, UserError};
use crate::stdio::{set_window_size, ChildStdio};

#[derive(Debug, Error)]
pub enum ChildError {
    #[error("{what}: {source}")]
    Sys { what: &'static str, source: Errno },
    #[error("cannot join the container cgroup: {0}")]
    Cgroup(std::io::Error),
    #[error(transparent)]
    Mount(#[from] FsOpError),
    #[error(transparent)]
    Pivot(#[from] PivotError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Capabilities(#[from] CapError),
    #[error("cannot create working directory {path}: {source}")]
    Cwd {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot enter working directory {path}: {source}")]
    Chdir { path: String, source: Errno },
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ChildError {
    move |source| ChildError::Sys { what, source }
}

/// Everything the child needs, prepared by the agent before the clone so
/// that pure errors (bad spec, bad capability names) never need a child.
pub struct ChildContext<'a> {
    pub spec: &'a ContainerSpec,
    pub plan: &'a [FsOp],
    pub rootfs: PathBuf,
    pub cgroup_procs: Option<PathBuf>,
    pub channel: OwnedFd,
    /// `None` with a terminal.
    pub stdio: Option<ChildStdio>,
}

/// The child's entry point: never returns into the agent's code.
pub fn run(ctx: ChildContext<'_>) -> ! {
    // The agent's PID-1 hook powers the VM off; a panic here must only
    // fail this container.
    drop(std::panic::take_hook());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup_and_exec(&ctx)));
    let message = match result {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(never)) => match never {},
        Err(_) => "container init panicked".to_string(),
    };
    let _ = channel::send_failed(ctx.channel.as_fd(), &message);
    // SAFETY: _exit skips atexit handlers and destructors, which belong to
    // the agent's copy of this address space.
    unsafe { libc::_exit(1) }
}

/// What setup resolved for the exec phase.
struct Prepared {
    user: ResolvedUser,
    capabilities: CapabilitySets,
    args: Vec<CString>,
    env: Vec<CString>,
    path_var: String,
    tty_slave: Option<OwnedFd>,
}

fn setup_and_exec(ctx: &ChildContext<'_>) -> Result<Infallible, ChildError> {
    let prepared = setup(ctx)?;
    if !channel::wait_start(ctx.channel.as_fd()) {
        // The agent dropped this container before starting it.
        // SAFETY: see `run`.
        unsafe { libc::_exit(1) }
    }
    become_process(ctx, prepared)
}

/// Builds the container up to the point of running its process.
fn setup(ctx: &ChildContext<'_>) -> Result<Prepared, ChildError> {
    // Modes in the plan (1777 for /dev/shm, 666 for nodes) must be exact.
    umask(Mode::empty());
    if let Some(procs) = &ctx.cgroup_procs {
        OpenOptions::new()
            .write(true)
            .open(procs)
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(ChildError::Cgroup)?;
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(sys("cannot create cgroup namespace"))?;
    }
    make_private().map_err(sys("cannot make mounts private"))?;
    apply_all(ctx.plan)?;
    enter(&ctx.rootfs)?;

    let spec = ctx.spec;
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(sys("cannot set hostname"))?;
    }
    loopback_up().map_err(sys("cannot bring up the loopback interface"))?;

    let process = &spec.process;
    let needs_passwd =
        matches!(process.user, User::Name { .. }) || env_value(&process.env, "HOME").is_none();
    let (passwd, group) = if needs_passwd {
        (read_or_empty("/etc/passwd"), read_or_empty("/etc/group"))
    } else {
        (String::new(), String::new())
    };
    let user = resolve(&process.user, &passwd, &group)?;
    let capabilities = capability_sets(process.capabilities.as_deref(), user.uid)?;

    let mut env = complete_env(
        &process.env,
        user.home.as_deref(),
        spec.hostname.as_deref(),
        process.terminal,
    );
    inherit_tunables(&mut env, std::env::var(GLIBC_TUNABLES).ok());
    let path_var = env_value(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();
    let env = to_cstrings(&env, "process.env")?;
    let args = to_cstrings(&process.args, "process.args")?;

    // Docker creates a missing working directory (as root, before the user
    // switch).
    std::fs::create_dir_all(&process.cwd).map_err(|source| ChildError::Cwd {
        path: process.cwd.clone(),
        source,
    })?;

    let tty_slave = if process.terminal {
        let (master, slave) = open_pty()?;
        if let Some(size) = process.console_size {
            set_window_size(master.as_fd(), size.rows, size.cols)
                .map_err(sys("cannot size the terminal"))?;
        }
        // The process must own its terminal to use it after the user switch.
        nix::unistd::fchown(
            slave.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(user.uid)),
            None,
        )
        .map_err(sys("cannot chown the terminal"))?;
        channel::send_ready(ctx.channel.as_fd(), Some(master.as_fd()))
            .map_err(sys("cannot report ready"))?;
        Some(slave)
    } else {
        channel::send_ready(ctx.channel.as_fd(), None).map_err(sys("cannot report ready"))?;
        None
    };

    Ok(Prepared {
        user,
        capabilities,
        args,
        env,
        path_var,
        tty_slave,
    })
}

fn read_or_empty(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn to_cstrings(items: &[String], field: &'static str) -> Result<Vec<CString>, ChildError> {
    items
        .iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| ChildError::Nul(field)))
        .collect()
}

/// Opens a pty pair on the container's own devpts (so the process sees
/// its terminal under /dev/pts).
fn open_pty() -> Result<(OwnedFd, OwnedFd), ChildError> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("cannot open /dev/ptmx"))?;
    // SAFETY: open just returned this descriptor; we take sole ownership.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int through the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(ChildError::Sys {
            what: "cannot unlock the pty",
            source: Errno::last(),
        });
    }
    // TIOCGPTPEER opens the slave through the master, no path lookup.
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(ChildError::Sys {
            what: "cannot open the pty slave",
            source: Errno::last(),
        });
    }
    // SAFETY: the ioctl just returned this descriptor.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// From here on this process is the container's: failures before the exec
/// still go to the agent (as the reply to Start), exec failures go to the
/// process's own stderr and exit code.
fn become_process(ctx: &ChildContext<'_>, p: Prepared) -> Result<Infallible, ChildError> {
    let process = &ctx.spec.process;
    nix::unistd::setsid().map_err(sys("cannot start a session"))?;
    match (&p.tty_slave, &ctx.stdio) {
        (Some(slave), _) => {
            // SAFETY: TIOCSCTTY takes an int by value; we are a session
            // leader without a controlling terminal.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(ChildError::Sys {
                    what: "cannot acquire the controlling terminal",
                    source: Errno::last(),
                });
            }
            let fd = slave.as_raw_fd();
            install_stdio([fd, fd, fd])?;
        }
        (None, Some(stdio)) => install_stdio([
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ])?,
        (None, None) => {}
    }

    // Raising limits needs CAP_SYS_RESOURCE: before giving up privileges.
    apply_rlimits(&process.rlimits)?;
    // Needs CAP_SETPCAP: before the user switch.
    drop_bounding(&p.capabilities)?;
    // Leaving uid 0 would clear the permitted set; keep it across the
    // switch so `apply_process_sets` can choose. Staying root keeps it
    // anyway, which saves two syscalls in the common case.
    let keep = p.user.uid != 0;
    if keep {
        nix::sys::prctl::set_keepcaps(true).map_err(sys("cannot keep capabilities"))?;
    }
    switch_user(&p.user)?;
    if keep {
        nix::sys::prctl::set_keepcaps(false).map_err(sys("cannot reset keepcaps"))?;
    }
    apply_process_sets(&p.capabilities)?;
    if process.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(sys("cannot set no_new_privs"))?;
    }
    // As the user, like runc: the process must be able to use its cwd.
    nix::unistd::chdir(process.cwd.as_str()).map_err(|source| ChildError::Chdir {
        path: process.cwd.clone(),
        source,
    })?;
    umask(Mode::from_bits_truncate(0o022));
    reset_signals();

    let failure = exec(&p.args, &p.env, &p.path_var);
    let _ = std::io::stderr().write_all(format!("{}\n", failure.message).as_bytes());
    // SAFETY: see `run`.
    unsafe { libc::_exit(failure.code) }
}

/// Puts `fds` on 0, 1, 2 (dup2 clears close-on-exec on the copies).
fn install_stdio(mut fds: [RawFd; 3]) -> Result<(), ChildError> {
    // A source already on 0-2 could be overwritten by an earlier dup2;
    // move them all out of the way first.
    if fds.iter().any(|&fd| fd <= 2) {
        for fd in &mut fds {
            *fd =
                fcntl(*fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(sys("cannot duplicate stdio"))?;
        }
    }
    for (target, fd) in fds.into_iter().enumerate() {
        // SAFETY: dup2 onto 0-2, which nothing in this process owns as a
        // Rust object; `fd` is open.
        if unsafe { libc::dup2(fd, target as RawFd) } < 0 {
            return Err(ChildError::Sys {
                what: "cannot install stdio",
                source: Errno::last(),
            });
        }
    }
    Ok(())
}

/// Undoes the agent's signal state, which exec would otherwise pass on:
/// the blocked SIGCHLD (for the signalfd) and Rust's ignored SIGPIPE.
fn reset_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // SAFETY: installing SIG_DFL involves no handler code.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
