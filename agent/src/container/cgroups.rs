//! The container's cgroup v2 group: limits from the spec, OOM detection,
//! the processes in it, freezing them and signalling them all, removal.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_protocol::Resources;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("invalid {field} {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: i128,
        reason: &'static str,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set {file} (controller not available in {cgroup})")]
    ControllerUnavailable { file: &'static str, cgroup: PathBuf },
    #[error("cannot write {value:?} to {file} in {cgroup}: {source}")]
    Write {
        file: &'static str,
        value: String,
        cgroup: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {file} in {cgroup}: {source}")]
    Read {
        file: &'static str,
        cgroup: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {cgroup} did not report {state} within {waited:?}")]
    Unsettled {
        cgroup: PathBuf,
        state: &'static str,
        waited: Duration,
    },
    #[error("cannot signal process {pid} of cgroup {cgroup}: {source}")]
    Signal {
        pid: u32,
        cgroup: PathBuf,
        source: Errno,
    },
}

const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// The cgroup v2 files and values that implement `r`, in OCI semantics
/// (the same conversions as runc/crun for v1-style inputs).
pub fn cgroup_settings(r: &Resources) -> Result<Vec<(&'static str, String)>, CgroupError> {
    let mut out = Vec::new();
    match r.memory_limit {
        None | Some(0) => {}
        Some(-1) => out.push(("memory.max", "max".to_string())),
        Some(n) if n > 0 => out.push(("memory.max", n.to_string())),
        Some(n) => {
            return Err(CgroupError::Invalid {
                field: "memory limit",
                value: n.into(),
                reason: "must be positive or -1",
            })
        }
    }
    match r.pids_limit {
        None => {}
        Some(n) if n > 0 => out.push(("pids.max", n.to_string())),
        Some(_) => out.push(("pids.max", "max".to_string())),
    }
    if r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let period = r.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD);
        if period == 0 {
            return Err(CgroupError::Invalid {
                field: "cpu period",
                value: 0,
                reason: "must be positive",
            });
        }
        let quota = match r.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_string(),
        };
        out.push(("cpu.max", format!("{quota} {period}")));
    }
    if let Some(shares) = r.cpu_shares.filter(|&s| s > 0) {
        // Maps shares [2, 262144] linearly onto weight [1, 10000].
        let s = shares.clamp(2, 262_144);
        out.push(("cpu.weight", (1 + ((s - 2) * 9999) / 262_142).to_string()));
    }
    if let Some(weight) = r.blkio_weight.filter(|&w| w > 0) {
        // Maps blkio weight [10, 1000] linearly onto io.weight [1, 10000].
        let w = u64::from(weight.clamp(10, 1000));
        out.push(("io.weight", (1 + ((w - 10) * 9999) / 990).to_string()));
    }
    Ok(out)
}

/// The `oom_kill` counter of a `memory.events` file.
pub fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The pids listed in a `cgroup.procs` file.
pub fn parse_pids(procs: &str) -> impl Iterator<Item = u32> + '_ {
    procs.lines().filter_map(|l| l.trim().parse().ok())
}

/// The `frozen` state of a `cgroup.events` file.
pub fn parse_frozen(events: &str) -> Option<bool> {
    events
        .lines()
        .filter_map(|l| l.strip_prefix("frozen "))
        .find_map(|v| match v.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        })
}

/// Appends the pids of `dir`'s group and of every group below it.
fn collect_pids(dir: &Path, out: &mut Vec<u32>) -> std::io::Result<()> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    out.extend(parse_pids(&procs));
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            match collect_pids(&entry.path(), out) {
                // A child group removed while we walk had no processes.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// A cgroup directory owned by the agent; removed explicitly with
/// [`Cgroup::remove`] once its processes are gone.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

fn write_file(cgroup: &Path, file: &'static str, value: &str) -> Result<(), CgroupError> {
    // No O_CREAT: a missing file means its controller is not enabled, and
    // cgroupfs would refuse the create anyway.
    let result = OpenOptions::new()
        .write(true)
        .open(cgroup.join(file))
        .and_then(|mut f| f.write_all(value.as_bytes()));
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(CgroupError::ControllerUnavailable {
            file,
            cgroup: cgroup.to_path_buf(),
        }),
        Err(source) => Err(CgroupError::Write {
            file,
            value: value.to_string(),
            cgroup: cgroup.to_path_buf(),
            source,
        }),
    }
}

impl Cgroup {
    /// Creates `root/name` and applies `resources` to it.
    pub fn create(root: &Path, name: &str, resources: &Resources) -> Result<Cgroup, CgroupError> {
        let settings = cgroup_settings(resources)?;
        let path = root.join(name);
        std::fs::create_dir(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Cgroup { path }.apply(&settings)
    }

    /// Takes over `path`, an empty cgroup made beforehand, and applies
    /// `resources` to it.
    pub fn adopt(path: PathBuf, resources: &Resources) -> Result<Cgroup, CgroupError> {
        let settings = match cgroup_settings(resources) {
            Ok(s) => s,
            Err(e) => {
                Cgroup { path }.remove();
                return Err(e);
            }
        };
        Cgroup { path }.apply(&settings)
    }

    fn apply(self, settings: &[(&'static str, String)]) -> Result<Cgroup, CgroupError> {
        let cgroup = self;
        for (file, value) in settings {
            if let Err(e) = write_file(&cgroup.path, file, value) {
                cgroup.remove();
                return Err(e);
            }
        }
        Ok(cgroup)
    }

    /// The file a process writes "0" to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Whether the kernel OOM-killed anything in the group.
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.path.join("memory.events"))
            .map(|e| parse_oom_kills(&e) > 0)
            .unwrap_or(false)
    }

    /// The pids (in the agent's pid namespace, which reads the files) of
    /// every process in the group, including the groups the container
    /// made below it.
    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids).map_err(|source| CgroupError::Read {
            file: "cgroup.procs",
            cgroup: self.path.clone(),
            source,
        })?;
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Whether the group is (being) frozen, as last asked of it.
    pub fn freeze_requested(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    /// Freezes (or thaws) the group and returns once `cgroup.events` says
    /// it is, or fails after `timeout`: a process stuck in the kernel can
    /// keep a group from freezing. The kernel wakes pollers of
    /// `cgroup.events` (POLLPRI) when it changes, so this waits without
    /// spinning.
    pub fn freeze(&self, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
        write_file(&self.path, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let read_err = |source| CgroupError::Read {
            file: "cgroup.events",
            cgroup: self.path.clone(),
            source,
        };
        let mut events = File::open(self.path.join("cgroup.events")).map_err(read_err)?;
        let deadline = Instant::now() + timeout;
        let mut text = String::new();
        loop {
            text.clear();
            events
                .rewind()
                .and_then(|()| events.read_to_string(&mut text))
                .map_err(read_err)?;
            if parse_frozen(&text) == Some(frozen) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CgroupError::Unsettled {
                    cgroup: self.path.clone(),
                    state: if frozen { "frozen 1" } else { "frozen 0" },
                    waited: timeout,
                });
            }
            // Short slices bound the wait even if a change notification
            // were missed between the read and the poll.
            let slice = left.min(Duration::from_millis(50));
            let ms = u16::try_from(slice.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(read_err(e.into())),
            }
        }
    }

    /// Sends `signal` to every process in the group. SIGKILL goes through
    /// `cgroup.kill`, which also catches processes forking meanwhile;
    /// other signals go to each listed process (one forked after the
    /// listing misses it, as with `runc kill --all`).
    pub fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        if signal == Signal::SIGKILL && write_file(&self.path, "cgroup.kill", "1").is_ok() {
            return Ok(());
        }
        for pid in self.processes()? {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match kill(Pid::from_raw(raw), signal) {
                // Exited since the listing.
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    return Err(CgroupError::Signal {
                        pid,
                        cgroup: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Kills whatever is left in the group and removes it. Best effort:
    /// a leftover empty group costs nothing.
    pub fn remove(self) {
        if std::fs::remove_dir(&self.path).is_ok() {
            return;
        }
        // Processes left behind (or still exiting): kill them all at once.
        let _ = write_file(&self.path, "cgroup.kill", "1");
        for _ in 0..100 {
            match std::fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(r: Resources) -> Vec<(&'static str, String)> {
        cgroup_settings(&r).unwrap()
    }

    #[test]
    fn no_limits_no_writes() {
        assert!(settings(Resources::default()).is_empty());
    }

    #[test]
    fn memory_and_pids() {
        let s = settings(Resources {
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
            ..Default::default()
        });
        assert_eq!(
            s,
            [
                ("memory.max", "67108864".to_string()),
                ("pids.max", "100".to_string())
            ]
        );
        let s = settings(Resources {
            memory_limit: Some(-1),
            pids_limit: Some(0),
            ..Default::default()
        });
        assert_eq!(
            s,
            [
                ("memory.max", "max".to_string()),
                ("pids.max", "max".to_string())
            ]
        );
        assert!(cgroup_settings(&Resources {
            memory_limit: Some(-5),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn cpu_max() {
        let cpu = |quota, period| {
            settings(Resources {
                cpu_quota: quota,
                cpu_period: period,
                ..Default::default()
            })
        };
        assert_eq!(
            cpu(Some(50_000), None),
            [("cpu.max", "50000 100000".into())]
        );
        assert_eq!(
            cpu(Some(20_000), Some(50_000)),
            [("cpu.max", "20000 50000".into())]
        );
        assert_eq!(cpu(Some(-1), None), [("cpu.max", "max 100000".into())]);
        assert_eq!(cpu(None, Some(10_000)), [("cpu.max", "max 10000".into())]);
        assert!(cgroup_settings(&Resources {
            cpu_period: Some(0),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn weights_follow_the_runc_conversions() {
        let w = |shares, blkio| {
            settings(Resources {
                cpu_shares: shares,
                blkio_weight: blkio,
                ..Default::default()
            })
        };
        assert_eq!(w(Some(2), None), [("cpu.weight", "1".into())]);
        assert_eq!(w(Some(1024), None), [("cpu.weight", "39".into())]);
        assert_eq!(w(Some(262_144), None), [("cpu.weight", "10000".into())]);
        assert_eq!(w(None, Some(10)), [("io.weight", "1".into())]);
        assert_eq!(w(None, Some(500)), [("io.weight", "4950".into())]);
        assert_eq!(w(None, Some(1000)), [("io.weight", "10000".into())]);
    }

    #[test]
    fn oom_kill_counter() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), 2);
        assert_eq!(parse_oom_kills("oom 1\n"), 0);
        assert_eq!(parse_oom_kills(""), 0);
    }

    #[test]
    fn procs_and_events_parse() {
        assert_eq!(parse_pids("12\n7\n\n").collect::<Vec<_>>(), [12, 7]);
        assert_eq!(parse_pids("").count(), 0);
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(parse_frozen("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_frozen("populated 1\n"), None);
    }

    #[test]
    fn processes_are_collected_from_the_group_and_below() {
        // A plain directory stands in for cgroupfs: only the files are read.
        let dir = std::env::temp_dir().join(format!("bulkhead-cg-procs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("child/grandchild")).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "30\n10\n").unwrap();
        std::fs::write(dir.join("child/cgroup.procs"), "").unwrap();
        std::fs::write(dir.join("child/grandchild/cgroup.procs"), "20\n10\n").unwrap();
        let cgroup = Cgroup { path: dir.clone() };
        assert_eq!(cgroup.processes().unwrap(), [10, 20, 30]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            cgroup.processes(),
            Err(CgroupError::Read {
                file: "cgroup.procs",
                ..
            })
        ));
    }

    #[test]
    fn missing_controller_is_reported_by_name() {
        let dir = std::env::temp_dir().join(format!("bulkhead-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Cgroup::create(
            &dir,
            "c",
            &Resources {
                memory_limit: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::ControllerUnavailable {
                    file: "memory.max",
                    ..
                }
            ),
            "{err}"
        );
        // The half-made group was removed.
        assert!(!dir.join("c").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
