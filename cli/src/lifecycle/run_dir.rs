//! The per-run directory (scratch disk, vsock socket, console log, the
//! virtiofsd sockets and logs): removed however the run ends, and, when a
//! run was killed before it could remove its own, by the next run.
//!
//! A live run holds an exclusive `flock` on `<dir>/lock` for its whole
//! life; the kernel drops it when the process dies, even by SIGKILL. A
//! later run sweeps every directory whose lock it can take. The lock file
//! appears already locked (made under another name, locked, then renamed),
//! so a sweeper can never take the lock of a run that is starting.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

use crate::paths;

const LOCK: &str = "lock";
/// A directory without a lock is a run being made, or one killed before
/// it locked; only the latter is this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(60);

pub struct RunDir {
    path: PathBuf,
    _lock: Flock<File>,
}

/// Where run directories live.
fn base() -> PathBuf {
    paths::root().join("run")
}

/// Removes the directories of dead runs (what `bulkhead gc` does, and
/// every new run first); returns how many went.
pub fn sweep_dead() -> usize {
    sweep(&base())
}

impl RunDir {
    /// Sweeps the directories of dead runs, then makes this run's.
    pub fn create() -> anyhow::Result<RunDir> {
        let base = base();
        std::fs::create_dir_all(&base)
            .with_context(|| format!("cannot create {}", base.display()))?;
        sweep(&base);
        let path = tempfile::Builder::new()
            .prefix("c-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a run directory in {}", base.display()))?
            .keep();
        match lock(&path) {
            Ok(lock) => Ok(RunDir { path, _lock: lock }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn lock(dir: &Path) -> anyhow::Result<Flock<File>> {
    let staging = dir.join(".lock-new");
    let file =
        File::create(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot lock {}", staging.display()))?;
    std::fs::rename(&staging, dir.join(LOCK))
        .with_context(|| format!("cannot create {}", dir.join(LOCK).display()))?;
    Ok(lock)
}

/// Removes the run directories in `base` that no live run holds. Errors
/// are ignored: a directory that cannot be swept now is tried next time.
fn sweep(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut swept = 0;
    for dir in entries.flatten().map(|e| e.path()) {
        if is_abandoned(&dir) {
            log::debug!("removing the directory of a dead run: {}", dir.display());
            swept += usize::from(std::fs::remove_dir_all(&dir).is_ok());
        }
    }
    swept
}

fn is_abandoned(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    match File::open(dir.join(LOCK)) {
        // Taken only if its holder is gone; dropped again at once.
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UNLOCKED_GRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_runs_are_swept() {
        let base = tempfile::tempdir().unwrap();
        let live = base.path().join("c-live");
        std::fs::create_dir(&live).unwrap();
        let _held = lock(&live).unwrap();
        let dead = base.path().join("c-dead");
        std::fs::create_dir(&dead).unwrap();
        drop(lock(&dead).unwrap());
        std::fs::write(dead.join("fs-0.sock"), "").unwrap();
        let starting = base.path().join("c-starting");
        std::fs::create_dir(&starting).unwrap();

        sweep(base.path());
        assert!(live.join(LOCK).exists());
        assert!(!dead.exists());
        // Too young to be anything but a run that is being made.
        assert!(starting.exists());
    }
}
