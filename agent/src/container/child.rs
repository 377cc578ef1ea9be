//! The container's init: runs in the cloned child, inside the new
//! namespaces and in the agent's memory (CLONE_VM) until it execs. It
//! joins the cgroup, mounts /proc, /sys, /dev and the volume binds, pivots
//! into the root the agent prepared, sets the sysctls, masks and freezes
//! the listed paths, then becomes the container's process (its seccomp
//! filter installed on the way).
//!
//! Nothing here allocates or unwinds: the agent prepared everything (see
//! `launch`), the init only makes syscalls and writes its timings into
//! memory the agent reads once it resumes. A setup failure goes back as a
//! fixed-size [`Failure`] over the report channel, and the agent turns it
//! into the typed [`ChildError`]; exec failures are the process's own
//! (message on its stderr, exit 127/126).

use std::convert::Infallible;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::stat::{umask, Mode};
use thiserror::Error;

use super::capabilities::{apply_process_sets, drop_bounding, CapError};
use super::channel::{self, Failure};
use super::fsops::{apply_all_raw, FsOpError};
use super::launch::Launch;
use super::masks::PathError;
use super::namespaces::loopback_up;
use super::process::{apply_rlimits, rlimit_error, switch_user, user_error, ProcessError};
use super::rootfs::{enter, enter_error, make_private, PivotError};
use super::seccomp::SeccompError;
use super::sysctl::SysctlError;
use super::user::UserError;
use crate::stdio::set_window_size;
use crate::trace::Mark;

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
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error(transparent)]
    Paths(#[from] PathError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot create working directory {path}: {source}")]
    Cwd { path: String, source: Errno },
    #[error("cannot enter working directory {path}: {source}")]
    Chdir { path: String, source: Errno },
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("container init sent a report the agent cannot read")]
    Garbled,
}

/// The init's setup steps, as they travel in a [`Failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    JoinCgroup = 1,
    CgroupNamespace,
    MakePrivate,
    Mount,
    Pivot,
    Hostname,
    Loopback,
    OpenPty,
    UnlockPty,
    PtySlave,
    SizeTty,
    ChownTty,
    SendPty,
    Session,
    ControllingTty,
    Stdio,
    Rlimit,
    Bounding,
    KeepCaps,
    User,
    ProcessCaps,
    NoNewPrivs,
    Cwd,
    Chdir,
    Sysctl,
    ReadonlyPath,
    MaskPath,
    Seccomp,
}

const STEPS: [Step; 28] = [
    Step::JoinCgroup,
    Step::CgroupNamespace,
    Step::MakePrivate,
    Step::Mount,
    Step::Pivot,
    Step::Hostname,
    Step::Loopback,
    Step::OpenPty,
    Step::UnlockPty,
    Step::PtySlave,
    Step::SizeTty,
    Step::ChownTty,
    Step::SendPty,
    Step::Session,
    Step::ControllingTty,
    Step::Stdio,
    Step::Rlimit,
    Step::Bounding,
    Step::KeepCaps,
    Step::User,
    Step::ProcessCaps,
    Step::NoNewPrivs,
    Step::Cwd,
    Step::Chdir,
    Step::Sysctl,
    Step::ReadonlyPath,
    Step::MaskPath,
    Step::Seccomp,
];

fn fail(step: Step, index: usize, errno: Errno) -> Failure {
    Failure {
        step: step as u32,
        index: index as u32,
        errno: errno as i32,
    }
}

fn at(step: Step) -> impl Fn(Errno) -> Failure {
    move |e| fail(step, 0, e)
}

/// Where the init is in its setup, for the agent's step table.
#[derive(Debug, Default, Clone, Copy)]
pub struct Marks {
    /// The init's first instruction.
    pub begin: Mark,
    pub steps: [(&'static str, Mark); MAX_MARKS],
    pub len: usize,
}

const MAX_MARKS: usize = 8;

impl Marks {
    fn mark(&mut self, name: &'static str) {
        if let Some(slot) = self.steps.get_mut(self.len) {
            *slot = (name, Mark::now());
            self.len += 1;
        }
    }

    pub fn recorded(&self) -> &[(&'static str, Mark)] {
        &self.steps[..self.len.min(MAX_MARKS)]
    }
}

/// What the init gets from the agent: read-only setup, its end of the
/// report channel, and the marks it fills in.
pub struct ChildArgs<'a> {
    pub launch: &'a Launch,
    pub report: RawFd,
    pub marks: Marks,
}

/// The init's entry point (on its own stack, see `spawn`).
pub extern "C" fn entry(arg: *mut c_void) -> c_int {
    // SAFETY: `Container::start` passes its `ChildArgs` and stays suspended
    // (CLONE_VFORK) until we exec or exit, so the reference is exclusive.
    let args = unsafe { &mut *arg.cast::<ChildArgs<'_>>() };
    args.marks.begin = Mark::now();
    let failure = match setup_and_exec(args.launch, args.report, &mut args.marks) {
        Err(f) => f,
        Ok(never) => match never {},
    };
    let _ = channel::send_failure(args.report, &failure);
    // SAFETY: _exit skips atexit handlers and destructors, which belong to
    // the agent, whose memory this still is.
    unsafe { libc::_exit(1) }
}

fn setup_and_exec(l: &Launch, report: RawFd, marks: &mut Marks) -> Result<Infallible, Failure> {
    // Modes in the plan (1777 for /dev/shm, 666 for nodes) must be exact.
    umask(Mode::empty());
    if let Some(procs) = &l.cgroup_procs {
        write_all(procs.as_raw_fd(), b"0").map_err(at(Step::JoinCgroup))?;
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(at(Step::CgroupNamespace))?;
        marks.mark("init:cgroup");
    }
    // Before the mounts: /sys shows the network namespace it is mounted in.
    match &l.netns {
        Some(ns) => setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(at(Step::Loopback))?,
        None => loopback_up().map_err(at(Step::Loopback))?,
    }
    marks.mark("init:net");
    make_private().map_err(at(Step::MakePrivate))?;
    apply_all_raw(&l.plan).map_err(|(i, e)| fail(Step::Mount, i, e))?;
    marks.mark("init:mounts");
    enter(&l.rootfs).map_err(|(i, e)| fail(Step::Pivot, i, e))?;
    marks.mark("init:pivot");
    if let Some(h) = &l.hostname {
        nix::unistd::sethostname(h).map_err(at(Step::Hostname))?;
    }
    // runc's order: sysctls (/proc/sys may be about to turn read-only),
    // read-only paths, then masks (over what is now the final tree).
    l.sysctls
        .apply()
        .map_err(|(i, e)| fail(Step::Sysctl, i, e))?;
    l.paths
        .apply_readonly()
        .map_err(|(i, e)| fail(Step::ReadonlyPath, i, e))?;
    l.paths
        .apply_masks()
        .map_err(|(i, e)| fail(Step::MaskPath, i, e))?;
    if !l.sysctls.is_empty() || !l.paths.is_empty() {
        marks.mark("init:paths");
    }
    let tty = if l.terminal {
        let slave = open_terminal(l, report)?;
        marks.mark("init:tty");
        Some(slave)
    } else {
        None
    };
    become_process(l, tty)?;
    marks.mark("init:creds");
    install_late_seccomp(l)?;
    exec_or_exit(l)
}

/// With no_new_privileges the seccomp filter goes on last, once the
/// process is the container's (without, `become_process` installed it
/// while the capability to do so was still there). Shared with processes
/// exec'd into the container.
pub(super) fn install_late_seccomp(l: &Launch) -> Result<(), Failure> {
    if l.no_new_privileges {
        install_seccomp(l)?;
    }
    Ok(())
}

/// Execs the process; if that fails, says why on its stderr and exits with
/// Docker's code (127/126), as the process would report it itself. Shared
/// with processes exec'd into the container.
pub(super) fn exec_or_exit(l: &Launch) -> ! {
    let failure = l.exec.exec();
    let mut line = StackLine::new();
    let _ = failure.write_message(l.exec.arg0(), &mut line);
    line.push(b'\n');
    let _ = write_all(2, line.bytes());
    // SAFETY: see `entry`.
    unsafe { libc::_exit(failure.code) }
}

pub(super) fn write_all(fd: RawFd, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match n {
            n if n > 0 => bytes = &bytes[n as usize..],
            0 => return Err(Errno::EIO),
            _ if Errno::last() == Errno::EINTR => {}
            _ => return Err(Errno::last()),
        }
    }
    Ok(())
}

/// A line formatted on the stack (cut at its capacity).
struct StackLine {
    buf: [u8; 512],
    len: usize,
}

impl StackLine {
    fn new() -> StackLine {
        StackLine {
            buf: [0; 512],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackLine {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

fn owned(raw: c_int, step: Step) -> Result<OwnedFd, Failure> {
    if raw < 0 {
        return Err(fail(step, 0, Errno::last()));
    }
    // SAFETY: the syscall just returned this descriptor; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Opens a pty pair on the container's own devpts (so the process sees
/// its terminal under /dev/pts), sends the master to the agent and returns
/// the slave.
pub(super) fn open_terminal(l: &Launch, report: RawFd) -> Result<OwnedFd, Failure> {
    // SAFETY: a NUL-terminated literal path and plain flags.
    let master = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let master = owned(master, Step::OpenPty)?;
    let unlock: c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int through the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(fail(Step::UnlockPty, 0, Errno::last()));
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
    let slave = owned(slave, Step::PtySlave)?;
    if let Some(size) = l.console_size {
        set_window_size(master.as_fd(), size.rows, size.cols).map_err(at(Step::SizeTty))?;
    }
    // The process must own its terminal to use it after the user switch.
    nix::unistd::fchown(
        slave.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(l.identity.uid)),
        None,
    )
    .map_err(at(Step::ChownTty))?;
    channel::send_pty(report, master.as_raw_fd()).map_err(at(Step::SendPty))?;
    Ok(slave)
}

/// From here on this process is the container's.
pub(super) fn become_process(l: &Launch, tty: Option<OwnedFd>) -> Result<(), Failure> {
    nix::unistd::setsid().map_err(at(Step::Session))?;
    match (&tty, &l.stdio) {
        (Some(slave), _) => {
            // SAFETY: TIOCSCTTY takes an int by value; we are a session
            // leader without a controlling terminal.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(fail(Step::ControllingTty, 0, Errno::last()));
            }
            let fd = slave.as_raw_fd();
            install_stdio([fd, fd, fd]).map_err(at(Step::Stdio))?;
        }
        (None, Some(stdio)) => install_stdio([
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ])
        .map_err(at(Step::Stdio))?,
        (None, None) => {}
    }

    // Raising limits needs CAP_SYS_RESOURCE: before giving up privileges.
    apply_rlimits(&l.rlimits).map_err(|(i, e)| fail(Step::Rlimit, i, e))?;
    // Needs CAP_SETPCAP: before the user switch.
    drop_bounding(&l.caps).map_err(|e| cap_failure(Step::Bounding, e))?;
    // Without no_new_privileges only CAP_SYS_ADMIN may install a filter:
    // now, while the init still has every capability (as runc does).
    if !l.no_new_privileges {
        install_seccomp(l)?;
    }
    // Leaving uid 0 would clear the permitted set; keep it across the
    // switch so `apply_process_sets` can choose. Staying root keeps it
    // anyway, which saves two syscalls in the common case.
    let keep = l.identity.uid != 0;
    if keep {
        nix::sys::prctl::set_keepcaps(true).map_err(at(Step::KeepCaps))?;
    }
    switch_user(&l.identity).map_err(|(i, e)| fail(Step::User, i, e))?;
    if keep {
        nix::sys::prctl::set_keepcaps(false).map_err(|e| fail(Step::KeepCaps, 1, e))?;
    }
    apply_process_sets(&l.caps).map_err(|e| cap_failure(Step::ProcessCaps, e))?;
    if l.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(at(Step::NoNewPrivs))?;
    }
    make_cwd(l)?;
    // As the user, like runc: the process must be able to use its cwd.
    // SAFETY: a NUL-terminated path the agent prepared.
    if unsafe { libc::chdir(l.cwd.as_ptr()) } != 0 {
        return Err(fail(Step::Chdir, 0, Errno::last()));
    }
    umask(Mode::from_bits_truncate(0o022));
    reset_signals();
    Ok(())
}

fn install_seccomp(l: &Launch) -> Result<(), Failure> {
    match &l.seccomp {
        Some(filter) => filter.install().map_err(at(Step::Seccomp)),
        None => Ok(()),
    }
}

fn cap_failure(step: Step, e: CapError) -> Failure {
    match e {
        CapError::Apply { source, .. } => fail(step, 0, source),
        CapError::Unknown(_) => fail(step, 0, Errno::EINVAL),
    }
}

/// Docker creates a missing working directory (as root, before the user
/// switch). One mkdir when the parent exists, which is the common case.
fn make_cwd(l: &Launch) -> Result<(), Failure> {
    let mkdir = |p: &std::ffi::CStr| {
        // SAFETY: a NUL-terminated path the agent prepared.
        match unsafe { libc::mkdir(p.as_ptr(), 0o755) } {
            0 => Ok(()),
            _ => Err(Errno::last()),
        }
    };
    match mkdir(&l.cwd) {
        Ok(()) | Err(Errno::EEXIST) => return Ok(()),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(fail(Step::Cwd, l.cwd_ancestors.len(), e)),
    }
    for (i, dir) in l.cwd_ancestors.iter().enumerate() {
        match mkdir(dir) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(Step::Cwd, i, e)),
        }
    }
    match mkdir(&l.cwd) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(fail(Step::Cwd, l.cwd_ancestors.len(), e)),
    }
}

/// Puts `fds` on 0, 1, 2 (dup2 clears close-on-exec on the copies).
fn install_stdio(mut fds: [RawFd; 3]) -> Result<(), Errno> {
    // A source already on 0-2 could be overwritten by an earlier dup2;
    // move them all out of the way first.
    if fds.iter().any(|&fd| fd <= 2) {
        for fd in &mut fds {
            *fd = fcntl(*fd, FcntlArg::F_DUPFD_CLOEXEC(3))?;
        }
    }
    for (target, fd) in fds.into_iter().enumerate() {
        // SAFETY: dup2 onto 0-2, which nothing in this process owns as a
        // Rust object; `fd` is open.
        if unsafe { libc::dup2(fd, target as RawFd) } < 0 {
            return Err(Errno::last());
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

fn sys(what: &'static str, source: Errno) -> ChildError {
    ChildError::Sys { what, source }
}

/// The agent's reading of the init's `failure`, with the names and paths
/// from the `Launch` it was given.
pub fn describe(failure: &Failure, l: &Launch) -> ChildError {
    let errno = Errno::from_raw(failure.errno);
    let index = failure.index as usize;
    let Some(step) = STEPS.iter().copied().find(|s| *s as u32 == failure.step) else {
        return ChildError::Garbled;
    };
    match step {
        Step::JoinCgroup => ChildError::Cgroup(errno.into()),
        Step::CgroupNamespace => sys("cannot create cgroup namespace", errno),
        Step::MakePrivate => sys("cannot make mounts private", errno),
        Step::Mount => match l.plan.get(index) {
            Some(op) => op.error(errno).into(),
            None => ChildError::Garbled,
        },
        Step::Pivot => enter_error(&l.rootfs, index, errno).into(),
        Step::Hostname => sys("cannot set hostname", errno),
        Step::Loopback => sys("cannot set up the network namespace", errno),
        Step::OpenPty => sys("cannot open /dev/ptmx", errno),
        Step::UnlockPty => sys("cannot unlock the pty", errno),
        Step::PtySlave => sys("cannot open the pty slave", errno),
        Step::SizeTty => sys("cannot size the terminal", errno),
        Step::ChownTty => sys("cannot chown the terminal", errno),
        Step::SendPty => sys("cannot pass the terminal to the agent", errno),
        Step::Session => sys("cannot start a session", errno),
        Step::ControllingTty => sys("cannot acquire the controlling terminal", errno),
        Step::Stdio => sys("cannot install stdio", errno),
        Step::Rlimit => match l.rlimits.get(index) {
            Some(r) => rlimit_error(r, errno).into(),
            None => ChildError::Garbled,
        },
        Step::Bounding => CapError::Apply {
            what: "bounding",
            source: errno,
        }
        .into(),
        Step::KeepCaps if index == 0 => sys("cannot keep capabilities", errno),
        Step::KeepCaps => sys("cannot reset keepcaps", errno),
        Step::User => user_error(&l.identity, index, errno).into(),
        Step::ProcessCaps => CapError::Apply {
            what: "process sets",
            source: errno,
        }
        .into(),
        Step::NoNewPrivs => sys("cannot set no_new_privs", errno),
        Step::Cwd => ChildError::Cwd {
            path: l
                .cwd_ancestors
                .get(index)
                .unwrap_or(&l.cwd)
                .to_string_lossy()
                .into_owned(),
            source: errno,
        },
        Step::Chdir => ChildError::Chdir {
            path: l.cwd.to_string_lossy().into_owned(),
            source: errno,
        },
        Step::Sysctl => l
            .sysctls
            .error(index, errno)
            .map_or(ChildError::Garbled, Into::into),
        Step::ReadonlyPath => l
            .paths
            .readonly_error(index, errno)
            .map_or(ChildError::Garbled, Into::into),
        Step::MaskPath => l
            .paths
            .mask_error(index, errno)
            .map_or(ChildError::Garbled, Into::into),
        Step::Seccomp => match &l.seccomp {
            Some(filter) => filter.error(errno).into(),
            None => ChildError::Garbled,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_decodes_to_itself() {
        for (i, s) in STEPS.iter().enumerate() {
            assert_eq!(*s as u32, i as u32 + 1, "{s:?} out of order");
        }
    }

    #[test]
    fn stack_lines_cut_at_capacity() {
        let mut l = StackLine::new();
        fmt::Write::write_str(&mut l, &"x".repeat(600)).unwrap();
        assert_eq!(l.bytes().len(), 512);
    }
}
