//! Starting a jailed VMM and driving it from the container's process.
//!
//! The child is forked with new namespaces; a PID namespace only takes
//! effect for the next process, so the child forks once more: the
//! grandchild execs `bulkhead jailed-vmm` as PID 1 of the new namespace,
//! while the child, holding nothing open, waits for it and ends the same
//! way (by the same signal, say SIGSYS), so waiting for the child is
//! waiting for the VMM. The VMM dies with its waiter (PDEATHSIG), and
//! stops its VM when its stdin ends, so no VMM outlives its driver.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Ended, Report, Request, CONSOLE_FD, TAP_FD};
use crate::lifecycle::vm_spec::{VmFiles, VmSpec};

/// How long a stopped VMM has to end before its process is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot start the jailed VMM: {0}")]
    Spawn(std::io::Error),
    #[error("{message}")]
    Build {
        message: String,
        template_fault: bool,
    },
    #[error("{0}")]
    Died(String),
}

impl JailError {
    /// Whether the template's snapshot is to blame (see `Report::Failed`).
    pub fn is_template_fault(&self) -> bool {
        matches!(
            self,
            JailError::Build {
                template_fault: true,
                ..
            }
        )
    }
}

pub struct JailedVm {
    /// The VMM's waiter, which ends as the VMM does.
    child: Mutex<Child>,
    /// Its stdin: a byte stops the VM.
    control: Arc<File>,
    /// Reads its reports; returns the last (how the VM ended).
    reports: Option<JoinHandle<Option<Report>>>,
    run_started: Instant,
    /// The VMM's host pid.
    pid: u32,
}

impl JailedVm {
    /// Starts the VMM of `spec` in its jail; returns once the VM is built
    /// and about to run.
    pub fn launch(spec: &VmSpec, files: VmFiles, run_dir: &Path) -> Result<JailedVm, JailError> {
        let request = Request {
            spec: spec.clone(),
            run_dir: run_dir.to_path_buf(),
        };
        let mut child = spawn(&files).map_err(JailError::Spawn)?;
        drop(files);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(JailError::Spawn(std::io::ErrorKind::BrokenPipe.into()));
        };
        let control = Arc::new(File::from(OwnedFd::from(stdin)));
        let mut line = serde_json::to_vec(&request).unwrap_or_default();
        line.push(b'\n');
        // A VMM that died at once is reported below, by how it ended.
        let _ = (&*control).write_all(&line);
        let (first_tx, first_rx) = mpsc::sync_channel(1);
        let reports = std::thread::Builder::new()
            .name("vmm-reports".into())
            .spawn(move || read_reports(BufReader::new(stdout), first_tx))
            .map_err(JailError::Spawn)?;
        let mut vm = JailedVm {
            child: Mutex::new(child),
            control,
            reports: Some(reports),
            run_started: Instant::now(),
            pid: 0,
        };
        match first_rx.recv() {
            Ok(Report::Ready { pid }) => {
                vm.run_started = Instant::now();
                vm.pid = pid;
                Ok(vm)
            }
            Ok(Report::Failed {
                message,
                template_fault,
            }) => {
                vm.wait();
                Err(JailError::Build {
                    message,
                    template_fault,
                })
            }
            Ok(Report::Ended(_)) | Err(_) => Err(JailError::Died(died(vm.wait()))),
        }
    }

    /// When the VMM reported its VM built, just before the vCPUs start.
    pub fn run_started(&self) -> Instant {
        self.run_started
    }

    /// The VMM's process on the host (which holds the guest's memory).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle that stops the VM from any thread.
    pub fn stopper(&self) -> Arc<File> {
        self.control.clone()
    }

    pub fn has_ended(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        !matches!(child.try_wait(), Ok(None))
    }

    /// Waits up to `grace` for the guest to end by itself, then stops it.
    pub fn finish(mut self, grace: Duration) -> Result<(), JailError> {
        let deadline = Instant::now() + grace;
        while !self.has_ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.has_ended() {
            stop(&self.control);
        }
        let status = self.wait();
        match self.reports.take().and_then(|r| r.join().ok()).flatten() {
            Some(Report::Ended(Ended::Failed(message))) => Err(JailError::Died(message)),
            // It must also have ended as it reported: cleanly.
            Some(Report::Ended(_)) if status.success() => Ok(()),
            _ => Err(JailError::Died(died(status))),
        }
    }

    /// Reaps the VMM, killing it if it has not ended `STOP_GRACE` after
    /// being asked to.
    fn wait(&mut self) -> ExitStatus {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                // Its waiter's death takes the VMM with it (PDEATHSIG).
                _ => {
                    let _ = child.kill();
                    return child.wait().unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
                }
            }
        }
    }
}

impl Drop for JailedVm {
    /// A VM never outlives the command that started it.
    fn drop(&mut self) {
        if self.reports.is_some() {
            stop(&self.control);
            self.wait();
            if let Some(r) = self.reports.take() {
                let _ = r.join();
            }
        }
    }
}

pub fn stop(control: &File) {
    let _ = (&*control).write(b"s");
}

/// How a VMM that reported nothing ended.
fn died(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(libc::SIGSYS), _) => {
            "the VMM was killed by SIGSYS: its seccomp filter caught a forbidden syscall".into()
        }
        (Some(sig), _) => format!("the VMM was killed by signal {sig}"),
        (None, Some(code)) => format!("the VMM ended with status {code} before it reported"),
        (None, None) => "the VMM ended".into(),
    }
}

fn read_reports(
    out: BufReader<std::process::ChildStdout>,
    first: mpsc::SyncSender<Report>,
) -> Option<Report> {
    let mut last = None;
    for line in out.lines() {
        let Ok(report) = line
            .map_err(drop)
            .and_then(|l| serde_json::from_str::<Report>(&l).map_err(drop))
        else {
            break;
        };
        if matches!(report, Report::Ended(_)) {
            last = Some(report);
        } else {
            let _ = first.send(report);
        }
    }
    last
}

fn spawn(files: &VmFiles) -> std::io::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    if crate::confine::seccomp() == crate::confine::SeccompMode::Off {
        cmd.args(["--seccomp", "off"]);
    }
    cmd.arg("jailed-vmm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let console = files.console.as_raw_fd();
    let tap = files.tap.as_ref().map(|t| t.as_raw_fd());
    // SAFETY: `enter_namespaces` makes only async-signal-safe calls
    // (fcntl, dup2, unshare, fork, prctl, close_range, waitpid, kill,
    // _exit) and allocates nothing.
    unsafe { cmd.pre_exec(move || enter_namespaces(console, tap)) };
    cmd.spawn()
}

fn check(rc: libc::c_long) -> std::io::Result<libc::c_long> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// In the forked child: the console log and TAP at their fixed numbers,
/// the new namespaces, then the fork that makes the VMM PID 1.
fn enter_namespaces(console: RawFd, tap: Option<RawFd>) -> std::io::Result<()> {
    // Through high numbers first: a source may sit on the other's target.
    // SAFETY (all blocks below): plain syscalls on descriptors and flags.
    let console = check(unsafe { libc::fcntl(console, libc::F_DUPFD_CLOEXEC, 100) }.into())?;
    let tap = match tap {
        Some(t) => Some(check(
            unsafe { libc::fcntl(t, libc::F_DUPFD_CLOEXEC, 100) }.into(),
        )?),
        None => None,
    };
    check(unsafe { libc::dup2(console as RawFd, CONSOLE_FD) }.into())?;
    if let Some(t) = tap {
        check(unsafe { libc::dup2(t as RawFd, TAP_FD) }.into())?;
    }
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    check(unsafe { libc::unshare(flags) }.into())?;
    let pid = check(unsafe { libc::fork() }.into())? as libc::pid_t;
    if pid == 0 {
        // The VMM: it dies with its waiter, and takes nothing beyond its
        // stdio, console and TAP into the exec.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::syscall(
                libc::SYS_close_range,
                TAP_FD + 1,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        return Ok(());
    }
    mirror(pid)
}

/// The waiter: holds no descriptor (so the VMM's pipes end with it) and
/// ends as the VMM did.
fn mirror(pid: libc::pid_t) -> ! {
    // SAFETY: async-signal-safe syscalls on this process alone.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0, u32::MAX, 0);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
        }
        libc::_exit(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            125
        })
    }
}
