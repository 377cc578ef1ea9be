//! The container's cgroup v2 group: limits from the spec, OOM detection,
//! removal.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulkhead_protocol::Resources;
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
