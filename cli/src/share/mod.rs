//! Host directories shared into the guest through virtio-fs: a real
//! virtiofsd per share, sandboxed, owned by the run that started it.
//!
//! bulkhead binds each share's listening vhost-user socket itself and
//! hands it to its virtiofsd, so the socket listens before the VMM
//! connects and nothing waits for a daemon to come up. The daemons end
//! with the run: [`Shares`] kills them when it drops, and the kernel kills
//! them if bulkhead itself is killed.

mod locate;
mod virtiofsd;
mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use locate::locate;
use virtiofsd::Virtiofsd;
use watch::Watch;

/// The virtio-fs tag of the `index`-th share: what the guest mounts it by.
/// Templates have slots with the same tags, so a share's tag does not
/// depend on how the VM was made.
pub fn tag(index: usize) -> String {
    format!("share{index}")
}

/// A host directory to share.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostDir {
    /// Absolute, with symlinks resolved.
    pub path: PathBuf,
    /// Enforced by virtiofsd: the guest cannot lift it.
    pub read_only: bool,
}

/// Why a share could not be served.
#[derive(Debug, Error)]
pub enum ShareError {
    #[error(
        "virtiofsd not found (looked for {looked}); host directories need it: \
         run scripts/deps.sh or `cargo install virtiofsd`"
    )]
    NotFound { looked: String },
    #[error("$BULKHEAD_VIRTIOFSD {0} is not an executable file")]
    BadOverride(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start virtiofsd for {dir}: {source}")]
    Spawn {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("virtiofsd for {dir} exited: {why}")]
    Exited { dir: PathBuf, why: String },
}

/// The virtiofsd of every share of one run, in share order. Dropping it
/// ends them and removes their sockets.
#[derive(Default)]
pub struct Shares {
    /// Declared first so it is disarmed before the daemons are killed.
    watch: Option<Watch>,
    program: PathBuf,
    daemons: Vec<Virtiofsd>,
}

impl Shares {
    /// Starts `program` for each of `dirs`, with its socket (`fs-N.sock`)
    /// in `sockets` and its log (`fs-N.log`) in `logs`. Call it from the
    /// thread that outlives the shares (the main thread): a child's
    /// parent-death signal fires when the thread that forked it ends.
    pub fn start(
        program: &Path,
        dirs: &[HostDir],
        sockets: &Path,
        logs: &Path,
    ) -> Result<Shares, ShareError> {
        let mut daemons = Vec::with_capacity(dirs.len());
        for (i, dir) in dirs.iter().enumerate() {
            daemons.push(Virtiofsd::spawn(
                program,
                dir,
                sockets.join(format!("fs-{i}.sock")),
                logs.join(format!("fs-{i}.log")),
            )?);
        }
        Ok(Shares {
            watch: None,
            program: program.to_path_buf(),
            daemons,
        })
    }

    /// The listening socket of each share, in share order.
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.daemons
            .iter()
            .map(|d| d.socket().to_path_buf())
            .collect()
    }

    /// Ends every daemon and starts a fresh one on the same socket path:
    /// a virtiofsd serves one connection, so a VM that connected and then
    /// failed to come up has used it.
    pub fn restart(&mut self) -> Result<(), ShareError> {
        self.watch = None;
        let old = std::mem::take(&mut self.daemons);
        for d in old {
            let (dir, socket, log) = (d.dir().clone(), d.socket().to_path_buf(), d.log().into());
            drop(d);
            self.daemons
                .push(Virtiofsd::spawn(&self.program, &dir, socket, log)?);
        }
        Ok(())
    }

    /// The first share whose virtiofsd has exited with an error, with what
    /// it said. A daemon that exited cleanly is no failure: virtiofsd does
    /// that when the VM disconnects, so the VM went first.
    pub fn failure(&mut self) -> Option<ShareError> {
        self.daemons.iter_mut().find_map(|d| d.failure())
    }

    /// [`failure`](Self::failure), waiting up to `grace` for one: for when
    /// something else has already failed, maybe because a daemon is dying
    /// (its socket closes a moment before its exit status is there).
    pub fn failure_within(&mut self, grace: Duration) -> Option<ShareError> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(f) = self.failure() {
                return Some(f);
            }
            if self.daemons.is_empty() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Calls `on_exit` once, from another thread, as soon as any daemon
    /// exits while the shares are held: the guest cannot go on without
    /// its files, and a dead backend would leave its requests unanswered.
    pub fn watch(&mut self, on_exit: impl FnOnce() + Send + 'static) {
        let pids: Vec<u32> = self
            .daemons
            .iter_mut()
            .filter_map(|d| d.running_pid())
            .collect();
        if !pids.is_empty() {
            self.watch = Watch::start(&pids, Box::new(on_exit));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in virtiofsd: a shell script, so these tests need neither
    /// virtiofsd nor root.
    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-virtiofsd");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn host_dir(dir: &Path) -> HostDir {
        HostDir {
            path: dir.to_path_buf(),
            read_only: true,
        }
    }

    fn alive(pid: u32) -> bool {
        // A zombie has no command line: it has exited.
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    }

    #[test]
    fn daemons_get_their_socket_and_arguments_and_end_with_the_guard() {
        let run = tempfile::tempdir().unwrap();
        // Records its arguments and whether the descriptor it was given
        // is a listening socket, then waits to be killed.
        let program = script(
            run.path(),
            r#"fd=""; prev=""
for a in "$@"; do [ "$prev" = --fd ] && fd=$a; prev=$a; done
echo "$@" > "$0.args"
[ -S /proc/self/fd/$fd ] && echo socket > "$0.fd"
exec sleep 1000"#,
        );
        let shared = tempfile::tempdir().unwrap();
        let mut shares =
            Shares::start(&program, &[host_dir(shared.path())], run.path(), run.path()).unwrap();
        let sock = run.path().join("fs-0.sock");
        assert_eq!(shares.sockets(), std::slice::from_ref(&sock));
        assert!(sock.exists());
        let pid = shares.daemons[0].running_pid().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !run.path().join("fake-virtiofsd.fd").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let args = std::fs::read_to_string(run.path().join("fake-virtiofsd.args")).unwrap();
        assert!(
            args.starts_with(&format!("--shared-dir {} --fd ", shared.path().display())),
            "{args}"
        );
        for want in ["--sandbox namespace", "--seccomp kill", "--readonly"] {
            assert!(args.contains(want), "{args}");
        }
        assert!(run.path().join("fake-virtiofsd.fd").exists(), "no socket");
        assert!(shares.failure_within(Duration::from_millis(50)).is_none());
        assert!(alive(pid));
        drop(shares);
        assert!(!alive(pid), "the daemon outlived its guard");
        assert!(!sock.exists(), "the socket outlived its guard");
    }

    #[test]
    fn an_exited_daemon_is_reported_with_its_last_words() {
        let run = tempfile::tempdir().unwrap();
        let program = script(
            run.path(),
            "echo '[2026-01-01T00:00:00Z ERROR virtiofsd] starting' >&2\n\
             echo '[2026-01-01T00:00:00Z ERROR virtiofsd] /srv/x does not exist' >&2\n\
             exit 1",
        );
        let shared = tempfile::tempdir().unwrap();
        let dirs = [host_dir(shared.path()), host_dir(shared.path())];
        let mut shares = Shares::start(&program, &dirs, run.path(), run.path()).unwrap();
        let failure = shares
            .failure_within(Duration::from_secs(10))
            .expect("the daemon never exited");
        assert_eq!(
            failure.to_string(),
            format!(
                "virtiofsd for {} exited: /srv/x does not exist",
                shared.path().display()
            )
        );
        // A restart gives each share a fresh daemon on the same socket.
        let sockets = shares.sockets();
        shares.restart().unwrap();
        assert_eq!(shares.sockets(), sockets);
        assert!(sockets.iter().all(|s| s.exists()));
    }

    #[test]
    fn a_clean_exit_is_no_failure_and_a_silent_death_says_how() {
        let run = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        let wait = |shares: &mut Shares| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while shares.daemons[0].running_pid().is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let clean = script(run.path(), "exit 0");
        let mut shares =
            Shares::start(&clean, &[host_dir(shared.path())], run.path(), run.path()).unwrap();
        wait(&mut shares);
        assert!(shares.failure().is_none());
        drop(shares);

        let killed = script(run.path(), "kill -9 $$");
        let mut shares =
            Shares::start(&killed, &[host_dir(shared.path())], run.path(), run.path()).unwrap();
        wait(&mut shares);
        let why = shares.failure().unwrap().to_string();
        assert!(why.ends_with("exited: signal: 9 (SIGKILL)"), "{why}");
    }

    #[test]
    fn the_watch_fires_when_a_daemon_dies_and_not_after_the_guard_drops() {
        let run = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        let program = script(run.path(), "exec sleep 1000");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut shares =
            Shares::start(&program, &[host_dir(shared.path())], run.path(), run.path()).unwrap();
        let fired = tx.clone();
        shares.watch(move || {
            let _ = fired.send("killed");
        });
        let pid = shares.daemons[0].running_pid().unwrap();
        // SAFETY: signals our own unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("killed"));
        drop(shares);

        let mut shares =
            Shares::start(&program, &[host_dir(shared.path())], run.path(), run.path()).unwrap();
        shares.watch(move || {
            let _ = tx.send("dropped");
        });
        drop(shares);
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    /// What a `kill -9` of bulkhead does to its daemons, without killing
    /// the test: the parent-death signal fires when the thread that forked
    /// the child ends, and no guard is left to stop it.
    #[test]
    fn a_daemon_dies_with_its_parent_even_unguarded() {
        let run = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        let program = script(run.path(), "exec sleep 1000");
        let (run_dir, dir) = (run.path().to_path_buf(), host_dir(shared.path()));
        let pid = std::thread::spawn(move || {
            let mut shares = Shares::start(&program, &[dir], &run_dir, &run_dir).unwrap();
            let pid = shares.daemons[0].running_pid().unwrap();
            std::mem::forget(shares);
            pid
        })
        .join()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "the daemon outlived its parent");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The real daemon, where there is one and we may sandbox it.
    #[test]
    fn real_virtiofsd_listens_on_the_socket_we_made() {
        let Ok(program) = locate() else {
            eprintln!("skipped: no virtiofsd");
            return;
        };
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the namespace sandbox needs root");
            return;
        }
        let run = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        let mut shares =
            Shares::start(&program, &[host_dir(shared.path())], run.path(), run.path()).unwrap();
        // Given time to fail (bad arguments, no sandbox), it must not.
        std::thread::sleep(Duration::from_millis(500));
        assert!(shares.failure().is_none());
        let pid = shares.daemons[0].running_pid().expect("virtiofsd exited");
        // The VMM's side: connecting works before virtiofsd accepts.
        std::os::unix::net::UnixStream::connect(&shares.sockets()[0]).unwrap();
        drop(shares);
        assert!(!alive(pid));
    }
}
