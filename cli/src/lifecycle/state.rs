//! A container's state on disk: one directory per container under a state
//! root (`--root`, default /run/bulkhead) holding its record
//! (`state.json`), its plan, the VM's sockets, disks and logs.
//!
//! Every command on a container holds `<dir>/lock` (an exclusive flock)
//! while it reads or changes the container, so two commands cannot race.
//! The monitor holding the VM holds `<dir>/monitor.lock` for its whole
//! life: the kernel drops it when the monitor dies, even by SIGKILL, which
//! is how a later command tells a dead container from a live one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The default state root, beside runc's /run/runc.
pub const DEFAULT_ROOT: &str = "/run/bulkhead";
const RECORD: &str = "state.json";
const LOCK: &str = "lock";
const MONITOR_LOCK: &str = "monitor.lock";
/// Written by the monitor alone (no lock: a command holding the lock may
/// be waiting for the monitor to exit).
const EXIT: &str = "exit.json";
pub const PLAN: &str = "plan.json";
pub const CONTROL_SOCKET: &str = "control.sock";
/// The container's output when nobody holds its stdio (`run -d`).
pub const OUTPUT_LOG: &str = "container.log";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container with id {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits and _ . - (at most 128, not starting with . or -)")]
    BadId(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt container state {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The OCI lifecycle states, plus `creating` (the monitor is building the
/// VM; nothing else may touch the container yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl From<bulkhead_protocol::Termination> for Exit {
    fn from(t: bulkhead_protocol::Termination) -> Exit {
        match t {
            bulkhead_protocol::Termination::Exited { code } => Exit::Code(code),
            bulkhead_protocol::Termination::Signaled { signal } => Exit::Signal(signal),
        }
    }
}

impl Exit {
    /// The status a shell would report: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// What a container's directory says of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub status: Status,
    /// The monitor's pid: the process that lives as long as the
    /// container's process and exits with its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The OCI bundle, or empty for containers made from an image.
    #[serde(default)]
    pub bundle: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The bundle's hooks still to run (poststart, poststop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<Exit>,
    /// For `run -d`: the image and command, for `ps` and `inspect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Where the container's output goes when no engine holds its stdio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// `run -d --rm`: the monitor removes the container once it exits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_remove: bool,
}

impl Record {
    pub fn new(id: &str, bundle: PathBuf) -> Record {
        Record {
            id: id.to_string(),
            status: Status::Creating,
            pid: None,
            bundle,
            created: rfc3339_now(),
            annotations: BTreeMap::new(),
            hooks: None,
            exit: None,
            image: None,
            command: Vec::new(),
            log: None,
            auto_remove: false,
        }
    }

    /// The OCI state (runtime spec, "State"), as `state` prints it and
    /// hooks read it on stdin.
    pub fn oci_state(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": self.status.as_str(),
            "bundle": self.bundle,
            "created": self.created,
        });
        if let Some(pid) = self.pid.filter(|_| self.status != Status::Stopped) {
            v["pid"] = pid.into();
        } else {
            v["pid"] = 0.into();
        }
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::to_value(&self.annotations).unwrap_or_default();
        }
        v
    }
}

/// A state root: the directory holding one directory per container.
#[derive(Debug, Clone)]
pub struct Root(PathBuf);

impl Root {
    /// `path`, else `$BULKHEAD_ROOT/containers` when a store root is set
    /// (so one root holds all of a test's or a user's state), else
    /// /run/bulkhead.
    pub fn new(path: Option<PathBuf>) -> Root {
        Root(
            path.unwrap_or_else(|| match std::env::var_os("BULKHEAD_ROOT") {
                Some(store) => PathBuf::from(store).join("containers"),
                None => PathBuf::from(DEFAULT_ROOT),
            }),
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The ids of every container in the root, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(RECORD).exists() || e.path().join(LOCK).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }
}

/// Ids as runc accepts them: they name directories and appear in paths.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with(['.', '-'])
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// One container's directory, with the command lock held.
pub struct Locked {
    dir: PathBuf,
    id: String,
    _lock: Flock<File>,
}

fn lock_file(path: &Path) -> Result<Flock<File>, StateError> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("cannot open", path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StateError::Io {
        what: "cannot lock",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

impl Locked {
    /// Makes a new container's directory (an id in use is an error).
    pub fn create(root: &Root, id: &str) -> Result<Locked, StateError> {
        check_id(id)?;
        std::fs::create_dir_all(root.path()).map_err(io("cannot create", root.path()))?;
        let dir = root.path().join(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(e) => return Err(io("cannot create", &dir)(e)),
        }
        let lock = lock_file(&dir.join(LOCK))?;
        Ok(Locked {
            dir,
            id: id.to_string(),
            _lock: lock,
        })
    }

    /// Locks an existing container's directory.
    pub fn open(root: &Root, id: &str) -> Result<Locked, StateError> {
        check_id(id)?;
        let dir = root.path().join(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound(id.to_string()));
        }
        let lock = lock_file(&dir.join(LOCK))?;
        // A delete may have removed it while we waited for the lock.
        if !dir.join(RECORD).exists() {
            if !dir.join(PLAN).exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(StateError::NotFound(id.to_string()));
        }
        Ok(Locked {
            dir,
            id: id.to_string(),
            _lock: lock,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record(&self) -> Result<Record, StateError> {
        read_record(&self.dir)
    }

    /// The record with its status brought up to date: a container whose
    /// monitor is gone has stopped, however it ended.
    pub fn current(&self) -> Result<Record, StateError> {
        let mut r = self.record()?;
        // We hold the lock `create` holds while it creates: a container
        // still "creating" lost its creator.
        if r.status != Status::Stopped && !monitor_alive(&self.dir) {
            r.status = Status::Stopped;
        }
        if r.exit.is_none() {
            r.exit = std::fs::read(self.dir.join(EXIT))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        }
        Ok(r)
    }

    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        write_record(&self.dir, record)
    }

    /// Removes the container's directory and everything in it.
    pub fn remove(self) -> Result<(), StateError> {
        std::fs::remove_dir_all(&self.dir).map_err(io("cannot remove", &self.dir))
    }
}

fn read_record(dir: &Path) -> Result<Record, StateError> {
    let path = dir.join(RECORD);
    let bytes = std::fs::read(&path).map_err(io("cannot read", &path))?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
}

fn write_record(dir: &Path, record: &Record) -> Result<(), StateError> {
    write_atomically(
        &dir.join(RECORD),
        &serde_json::to_vec_pretty(record).unwrap_or_default(),
    )
}

/// Writes `bytes` to `path` through a staging file and a rename: a reader
/// (another command, an engine reading a pid file) never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".bulkhead-new");
    let staging = PathBuf::from(staging);
    std::fs::write(&staging, bytes).map_err(io("cannot write", &staging))?;
    std::fs::rename(&staging, path).map_err(io("cannot write", path))
}

/// Removes the container in `dir` if its record asks for that. Called by
/// the monitor once the container has exited; it waits a little for a
/// command holding the container (`run -d` itself, whose container may be
/// done before `run` is), but not for long: one that holds it longer
/// (`delete`, `stop`) may be waiting for this monitor to exit, and removes
/// the container itself.
pub fn remove_if_asked(dir: &Path) {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
    if !read_record(dir).is_ok_and(|r| r.auto_remove) {
        return;
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let Ok(file) = File::open(dir.join(LOCK)) else {
            return;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_lock) => {
                let _ = std::fs::remove_dir_all(dir);
                return;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(_) => return,
        }
    }
}

/// Records how the container's process ended (by the monitor).
pub fn write_exit(dir: &Path, exit: Exit) -> Result<(), StateError> {
    write_atomically(
        &dir.join(EXIT),
        &serde_json::to_vec(&exit).unwrap_or_default(),
    )
}

/// Held by the monitor for its life.
pub struct MonitorLock(#[allow(dead_code)] Flock<File>);

impl MonitorLock {
    pub fn take(dir: &Path) -> Result<MonitorLock, StateError> {
        let path = dir.join(MONITOR_LOCK);
        let file = File::create(&path).map_err(io("cannot create", &path))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map(MonitorLock)
            .map_err(|(_, e)| StateError::Io {
                what: "another monitor holds",
                path,
                source: e.into(),
            })
    }
}

/// Whether a monitor still holds `dir`'s container.
pub fn monitor_alive(dir: &Path) -> bool {
    match File::open(dir.join(MONITOR_LOCK)) {
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
        Err(_) => false,
    }
}

/// The time now as RFC 3339 in UTC, with nanoseconds (as runc writes it).
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["abc", "a1_b.c-d", "0123456789ab"] {
            check_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn a_container_without_its_monitor_has_stopped() {
        let root = tempfile::tempdir().unwrap();
        let root = Root::new(Some(root.path().to_path_buf()));
        let c = Locked::create(&root, "c1").unwrap();
        assert!(matches!(
            Locked::create(&root, "c1"),
            Err(StateError::Exists(_))
        ));
        let mut r = Record::new("c1", PathBuf::from("/b"));
        r.status = Status::Running;
        c.save(&r).unwrap();
        let held = MonitorLock::take(c.dir()).unwrap();
        assert_eq!(c.current().unwrap().status, Status::Running);
        drop(held);
        assert_eq!(c.current().unwrap().status, Status::Stopped);
        assert_eq!(root.ids(), ["c1"]);
        c.remove().unwrap();
        assert!(matches!(
            Locked::open(&root, "c1"),
            Err(StateError::NotFound(_))
        ));
    }
}
