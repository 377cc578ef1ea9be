//! Restore alone: a `bulkhead restore` child restores a template and ends
//! the VM as soon as its vCPUs run, so nothing of the guest's own work (the
//! agent, a container) is counted. It reports its instants with the hidden
//! `--timings-json`; the bench adds the process start it timed itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::phases::PhaseError;
use super::programs::{tail, wait_with_timeout};
use crate::run::record::monotonic_ns;

/// Phase names of one restore, in order; they add up to the total.
pub const PHASES: [&str; 3] = ["process start", "state + memory restore", "vcpu start"];
/// The figure the target is about: process start to vCPUs running.
pub const TOTAL: &str = "restore alone: process start to vcpus running";

/// Far more than a restore takes even on a PVM host (tens of ms).
const TIMEOUT: Duration = Duration::from_secs(60);

/// What `bulkhead restore --timings-json` writes: CLOCK_MONOTONIC ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// `main` reached the restore (the process had loaded and parsed its
    /// arguments).
    pub begin_ns: u64,
    /// The VM's state and memory were restored.
    pub restored_ns: u64,
    /// `Vmm::run` was called: it starts the vCPUs within microseconds.
    pub vcpus_started_ns: u64,
}

impl RestoreRecord {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<RestoreRecord> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a restore record", path.display()))
    }
}

/// One restore's phases, in ms.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreTimes {
    /// `(phase, ms)` for each of [`PHASES`].
    pub phases: Vec<(&'static str, f64)>,
    pub total_ms: f64,
}

/// The phases of a child spawned at `spawn_ns`.
pub fn restore_times(spawn_ns: u64, rec: &RestoreRecord) -> Result<RestoreTimes, PhaseError> {
    let points = [
        spawn_ns,
        rec.begin_ns,
        rec.restored_ns,
        rec.vcpus_started_ns,
    ];
    if points.windows(2).any(|w| w[0] > w[1]) {
        return Err(PhaseError::OutOfOrder(
            "spawn, restore begin, restored, vcpus started",
        ));
    }
    let ms = |from: u64, to: u64| (to - from) as f64 / 1e6;
    Ok(RestoreTimes {
        phases: PHASES
            .iter()
            .zip(points.windows(2))
            .map(|(name, w)| (*name, ms(w[0], w[1])))
            .collect(),
        total_ms: ms(spawn_ns, rec.vcpus_started_ns),
    })
}

/// `bulkhead restore` children of this very binary, on one template.
pub struct Restorer {
    exe: PathBuf,
    template: PathBuf,
    record: PathBuf,
    vsock: PathBuf,
}

impl Restorer {
    pub fn new(exe: &Path, template: &Path, scratch: &Path) -> Restorer {
        Restorer {
            exe: exe.to_path_buf(),
            template: template.to_path_buf(),
            record: scratch.join("restore.json"),
            vsock: scratch.join("restore-vsock.sock"),
        }
    }

    /// Restores the template once, without disks (the slots stay empty:
    /// nothing in the guest runs long enough to miss them) but with the
    /// vsock device a template always has.
    pub fn once(&self) -> anyhow::Result<RestoreTimes> {
        let _ = std::fs::remove_file(&self.record);
        let _ = std::fs::remove_file(&self.vsock);
        let mut cmd = Command::new(&self.exe);
        cmd.arg("restore")
            .arg("--timings-json")
            .arg(&self.record)
            .arg("--stop-after-start")
            .arg("--vsock-uds")
            .arg(&self.vsock)
            .arg(&self.template)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawn_ns = monotonic_ns();
        let child = cmd.spawn().context("cannot start `bulkhead restore`")?;
        let output = wait_with_timeout(child, TIMEOUT).context("`bulkhead restore`");
        let _ = std::fs::remove_file(&self.vsock);
        let output = output?;
        if !output.status.success() {
            bail!(
                "`bulkhead restore` failed ({}):\n{}",
                output.status,
                tail(&output.stderr, 20)
            );
        }
        let record = RestoreRecord::read(&self.record)?;
        let _ = std::fs::remove_file(&self.record);
        Ok(restore_times(spawn_ns, &record)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn rec() -> RestoreRecord {
        RestoreRecord {
            begin_ns: 1_000 * MS + 3 * MS,
            restored_ns: 1_000 * MS + 7 * MS,
            vcpus_started_ns: 1_000 * MS + 8 * MS,
        }
    }

    #[test]
    fn phases_add_up_to_the_total() {
        let t = restore_times(1_000 * MS, &rec()).unwrap();
        let names: Vec<_> = t.phases.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, PHASES);
        assert_eq!(
            t.phases.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [3.0, 4.0, 1.0]
        );
        assert_eq!(t.total_ms, 8.0);
    }

    #[test]
    fn disordered_instants_are_rejected() {
        // Spawned after the child claims it began.
        assert!(restore_times(1_000 * MS + 4 * MS, &rec()).is_err());
        let mut r = rec();
        r.vcpus_started_ns = r.begin_ns;
        assert!(matches!(
            restore_times(1_000 * MS, &r),
            Err(PhaseError::OutOfOrder(_))
        ));
    }

    #[test]
    fn record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        rec().write(&path).unwrap();
        assert_eq!(RestoreRecord::read(&path).unwrap(), rec());
        std::fs::write(&path, "[]").unwrap();
        let e = RestoreRecord::read(&path).unwrap_err();
        assert!(format!("{e:#}").contains("r.json"));
    }
}
