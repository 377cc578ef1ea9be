//! One virtiofsd: started on a socket bulkhead made, stopped and reaped
//! when dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{HostDir, ShareError};

/// How long a daemon gets to leave on SIGTERM before SIGKILL. virtiofsd
/// exits at once on SIGTERM; this only bounds a stuck one.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// The end of the log kept for an error message.
const LOG_TAIL_BYTES: u64 = 4096;

pub struct Virtiofsd {
    dir: HostDir,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
    /// Set once the child is reaped; its pid (and process group) may then
    /// belong to someone else, so nothing is sent to it after.
    status: Option<ExitStatus>,
}

impl Virtiofsd {
    /// Binds `socket`, starts `program` serving `dir` on it with its
    /// stderr in `log`. The socket listens when this returns.
    pub fn spawn(
        program: &Path,
        dir: &HostDir,
        socket: PathBuf,
        log: PathBuf,
    ) -> Result<Virtiofsd, ShareError> {
        let socket_error = |source| ShareError::Socket {
            path: socket.clone(),
            source,
        };
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(socket_error(e)),
        }
        let listener = UnixListener::bind(&socket).map_err(socket_error)?;
        // Above the standard streams, which the child's stdio setup
        // replaces before our pre_exec runs. Close-on-exec like everything
        // of ours; only the child clears it.
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the result is a
        // new descriptor that nothing else owns.
        let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(socket_error(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just made by fcntl and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let stderr = File::create(&log).map_err(|source| ShareError::Log {
            path: log.clone(),
            source,
        })?;

        let mut cmd = Command::new(program);
        cmd.arg("--shared-dir")
            .arg(&dir.path)
            .arg("--fd")
            .arg(fd.as_raw_fd().to_string())
            .args(["--sandbox", "namespace", "--seccomp", "kill"])
            .args(["--cache", "auto", "--log-level", "error"]);
        if dir.read_only {
            cmd.arg("--readonly");
        }
        // Its own process group: a Ctrl-C at the terminal is for the
        // container (bulkhead forwards it), not for the file server.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        let child_fd = fd.as_raw_fd();
        // SAFETY: the closure runs between fork and exec, where only
        // async-signal-safe calls are allowed: it makes three (prctl,
        // getppid, fcntl), allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                // Killed with bulkhead, even by SIGKILL; virtiofsd passes
                // its own death on to its sandboxed child.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // bulkhead may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                if libc::fcntl(child_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ShareError::Spawn {
            dir: dir.path.clone(),
            source,
        })?;
        // Only the daemon holds the socket now: if it dies, the VMM's
        // connect is refused instead of queueing on a socket nobody serves.
        drop(fd);
        drop(listener);
        Ok(Virtiofsd {
            dir: dir.clone(),
            socket,
            log,
            child,
            status: None,
        })
    }

    pub fn dir(&self) -> &HostDir {
        &self.dir
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Reaps the daemon if it has exited; its status once it has.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The daemon's pid while it runs.
    pub fn running_pid(&mut self) -> Option<u32> {
        match self.poll() {
            None => Some(self.child.id()),
            Some(_) => None,
        }
    }

    /// The error to report if the daemon has exited unsuccessfully.
    pub fn failure(&mut self) -> Option<ShareError> {
        let status = self.poll()?;
        if status.success() {
            return None;
        }
        Some(ShareError::Exited {
            dir: self.dir.path.clone(),
            why: last_words(&self.log).unwrap_or_else(|| status.to_string()),
        })
    }

    /// SIGTERM to the daemon's process group (it and its sandboxed child),
    /// SIGKILL if it lingers, and reaps it.
    fn stop(&mut self) {
        if self.poll().is_some() {
            return;
        }
        // The group is still ours: its leader is not reaped.
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        let mut delay = Duration::from_millis(1);
        while self.poll().is_none() && Instant::now() < deadline {
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
        if self.status.is_none() {
            let _ = killpg(group, Signal::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The daemon's last log line, without its `[time LEVEL target]` prefix.
fn last_words(log: &Path) -> Option<String> {
    let mut file = File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    let message = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((_, message)) => message,
        None => line,
    };
    Some(message.chars().take(300).collect())
}
