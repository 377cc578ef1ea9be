//! The monitor: the process that holds a container's VM for the
//! container's life, so containers outlive the command that made them.
//!
//! `create` starts it (`bulkhead monitor ID`, hidden) and waits on a pipe
//! until the container is built in its VM. From then on the monitor is the
//! container as far as the host can see: its pid goes in `--pid-file`, its
//! stdio is the container's, it answers `start` and `kill` on its control
//! socket, and it exits with the container's status, or dies of the same
//! signal, so conmon and containerd's shim see what they see with runc.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};

use super::agent::forward_stdin;
use super::control::{self, Request};
use super::create::{create, Created};
use super::kill_deadline::KillDeadline;
use super::plan::Plan;
use super::signals::SignalRouter;
use super::state::{self, write_exit, Exit, MonitorLock, Root};
use super::tty;

const READY_FD_ENV: &str = "BULKHEAD_READY_FD";

/// Where the monitor's (and so the container's) stdio goes.
pub enum MonitorStdio {
    /// The caller's: an engine's pipes (conmon, the containerd shim).
    Inherit,
    /// stdin from /dev/null, stdout and stderr appended to this file.
    Log(PathBuf),
    /// The slave side of a pty, which becomes the monitor's controlling
    /// terminal (its size changes arrive as SIGWINCH).
    Terminal(OwnedFd),
}

/// Starts the monitor of the container in `dir` (whose plan is written)
/// and waits until the container is built; returns the monitor's pid.
pub fn launch(root: &Root, id: &str, stdio: MonitorStdio) -> anyhow::Result<u32> {
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot create a pipe")?;
    let mut cmd = Command::new(std::env::current_exe().context("cannot find our own binary")?);
    cmd.arg("--root").arg(root.path());
    if crate::confine::seccomp() == crate::confine::SeccompMode::Off {
        cmd.args(["--seccomp", "off"]);
    }
    if crate::confine::jail() == crate::confine::JailMode::Off {
        cmd.args(["--jail", "off"]);
    }
    cmd.arg("monitor")
        .arg(id)
        .env(READY_FD_ENV, ready_w.as_raw_fd().to_string());
    let terminal = matches!(stdio, MonitorStdio::Terminal(_));
    match stdio {
        MonitorStdio::Inherit => {}
        MonitorStdio::Log(path) => {
            let log = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
        }
        MonitorStdio::Terminal(slave) => {
            cmd.stdin(slave.try_clone()?)
                .stdout(slave.try_clone()?)
                .stderr(slave);
        }
    }
    let raw_w = ready_w.as_raw_fd();
    // SAFETY: between fork and exec the closure only makes async-signal-
    // safe calls (fcntl, setsid, ioctl) on descriptors it was given.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::fcntl(raw_w, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its own session: the caller's terminal signals are not its.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("cannot start the container's monitor")?;
    drop(ready_w);
    let mut answer = String::new();
    let _ = File::from(ready_r).read_to_string(&mut answer);
    match answer.strip_prefix("error ") {
        None if answer == "ok" => Ok(child.id()),
        Some(message) => {
            let _ = child.wait();
            bail!("{message}")
        }
        None => {
            let status = child.wait()?;
            bail!("the container's monitor exited while creating it ({status})")
        }
    }
}

/// The hidden `monitor` command. Never returns while the container lives.
pub fn main(root: &Root, id: &str) -> ExitCode {
    let mut ready = ReadyPipe::from_env();
    match serve(root, id, &mut ready) {
        Ok(exit) => exit_like(exit),
        Err(e) => {
            let message = format!("{e:#}");
            if !ready.fail(&message) {
                eprintln!("bulkhead: {message}");
            }
            ExitCode::from(125)
        }
    }
}

fn serve(root: &Root, id: &str, ready: &mut ReadyPipe) -> anyhow::Result<Exit> {
    let dir = root.path().join(id);
    let _alive = MonitorLock::take(&dir)?;
    let plan = Plan::read(&dir.join(state::PLAN))?;
    crate::template::set_quiet();
    let router = SignalRouter::install()?;
    let control = control::Server::bind(&dir)?;
    let created = create(&plan, &dir, &router, &mut |_| {})?;
    if !ready.ok() {
        // Nobody will start it or learn our pid: end the VM now.
        bail!("the command creating the container is gone");
    }
    let terminal = plan.spec.process.terminal;
    let Some(running) = await_start(created, &control)? else {
        return Ok(record(&dir, Exit::Signal(libc::SIGKILL)));
    };
    let mut running = running;
    let writer = running.writer();
    router.set_container(writer.clone(), terminal);
    let _raw = if terminal {
        tty::RawMode::enter()
    } else {
        None
    };
    let deadline = running
        .kill_deadline()
        .context("cannot watch the agent connection")?;
    serve_kills(control, writer.clone(), deadline.clone());
    forward_stdin(writer);
    let status = match running.wait(|| {}) {
        Ok(status) => status,
        Err(e) => return Err(running.fail(e)),
    };
    let exit = Exit::from(status.termination);
    record(&dir, exit);
    if deadline.forced() {
        eprintln!(
            "bulkhead: the guest did not end the container within {:?} of SIGKILL: its microVM was ended",
            deadline.grace()
        );
    }
    if status.oom_killed {
        eprintln!("bulkhead: the container was killed: out of memory");
    }
    if let Err(e) = running.end() {
        eprintln!("bulkhead: the microVM did not shut down cleanly: {e}");
    }
    state::remove_if_asked(&dir);
    Ok(exit)
}

fn record(dir: &Path, exit: Exit) -> Exit {
    if let Err(e) = write_exit(dir, exit) {
        eprintln!("bulkhead: {e}");
    }
    exit
}

/// Answers control requests until `start` runs the process; `None` if a
/// `kill` ended the container first (the VM ends with `created`).
fn await_start(
    created: Created,
    control: &control::Server,
) -> anyhow::Result<Option<super::start::Running>> {
    loop {
        let incoming = control.next()?;
        match incoming.request {
            Some(Request::Start) => {
                return match created.start() {
                    Ok(running) => {
                        incoming.reply(Ok(()));
                        Ok(Some(running))
                    }
                    Err(e) => {
                        incoming.reply(Err(format!("{e:#}")));
                        Err(e)
                    }
                };
            }
            Some(Request::Kill { signal: 0, .. }) => incoming.reply(Ok(())),
            Some(Request::Kill { .. }) => {
                // Like runc's init waiting for start: any signal ends it.
                drop(created);
                incoming.reply(Ok(()));
                return Ok(None);
            }
            None => incoming.reply(Err("unknown request".into())),
        }
    }
}

/// Serves `kill` (and refuses a second `start`) while the process runs.
/// SIGKILL arms its deadline: the VM ends if the guest does not kill in
/// time.
fn serve_kills(
    control: control::Server,
    writer: std::sync::Arc<
        std::sync::Mutex<bulkhead_protocol::AgentWriter<std::os::unix::net::UnixStream>>,
    >,
    deadline: KillDeadline,
) {
    std::thread::spawn(move || {
        while let Ok(incoming) = control.next() {
            let result = match incoming.request {
                Some(Request::Start) => Err("the container is already running".to_string()),
                Some(Request::Kill { signal: 0, .. }) => Ok(()),
                Some(Request::Kill { signal, all }) => {
                    if signal == libc::SIGKILL {
                        deadline.arm();
                    }
                    relay_signal(&writer, signal, all)
                }
                None => Err("unknown request".to_string()),
            };
            incoming.reply(result);
        }
    });
}

fn relay_signal(
    writer: &std::sync::Mutex<bulkhead_protocol::AgentWriter<std::os::unix::net::UnixStream>>,
    signal: i32,
    all: bool,
) -> Result<(), String> {
    match writer.lock() {
        Ok(mut w) => if all {
            w.signal_all(signal)
        } else {
            w.signal(signal)
        }
        .map_err(|e| format!("cannot signal the container: {e}")),
        Err(_) => Err("the container is gone".to_string()),
    }
}

/// Ends this process as the container's process ended: the same exit
/// code, or death by the same signal (without a core dump).
pub fn exit_like(exit: Exit) -> ExitCode {
    match exit {
        Exit::Code(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Exit::Signal(signal) => {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain syscalls on values we own; after raise() the
            // process is gone unless the signal is ignored or blocked.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                libc::signal(signal, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, signal);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(signal);
            }
            ExitCode::from((128 + signal).clamp(0, 255) as u8)
        }
    }
}

/// The write end of `launch`'s pipe: `ok` once the container is built,
/// or `error MESSAGE`.
struct ReadyPipe(Option<File>);

impl ReadyPipe {
    fn from_env() -> ReadyPipe {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        std::env::remove_var(READY_FD_ENV);
        // SAFETY: `launch` handed us this descriptor, open and ours alone.
        let file = fd.map(|fd| unsafe { File::from_raw_fd(fd) });
        // Nothing we start (virtiofsd) may hold it open: `launch` waits for
        // its end of file.
        if let Some(f) = &file {
            let _ = nix::fcntl::fcntl(
                f.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
        ReadyPipe(file)
    }

    /// Reports success; false if nobody is waiting any more.
    fn ok(&mut self) -> bool {
        match self.0.take() {
            Some(mut f) => f.write_all(b"ok").is_ok(),
            None => true,
        }
    }

    /// Reports `message`; false if nobody is waiting any more.
    fn fail(&mut self, message: &str) -> bool {
        match self.0.take() {
            Some(mut f) => f.write_all(format!("error {message}").as_bytes()).is_ok(),
            None => false,
        }
    }
}
