//! The machine-readable account of one run (`--timings-json FILE`): host
//! timestamps of each phase, the agent's own milestones by the guest clock,
//! and the VMM's memory. `bulkhead bench` runs `bulkhead run` as a child and
//! reads this back, so the timestamps are CLOCK_MONOTONIC nanoseconds, which
//! every process on the host shares.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use bulkhead_protocol::GuestTimes;
use serde::{Deserialize, Serialize};

/// Names of the phase marks `bulkhead run` takes, in order.
pub mod mark {
    pub const IMAGE: &str = "image";
    pub const DISKS: &str = "disks";
    pub const VM_BUILD: &str = "vm build";
    pub const AGENT_CONNECTED: &str = "boot to agent";
    pub const CONTAINER_STARTED: &str = "container start";
    pub const EXITED: &str = "run";
    pub const VM_GONE: &str = "vm shutdown";
}

/// The VMM process's memory, sampled while the guest still runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Resident and proportional set size of the whole process, in KiB.
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// How much of the guest's RAM mapping is resident (the guest touched it).
    pub guest_rss_kib: u64,
    /// The guest RAM the VM was given, in KiB.
    pub guest_size_kib: u64,
}

impl MemorySample {
    /// What the VMM itself costs on top of the guest's memory.
    pub fn overhead_rss_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_rss_kib)
    }

    /// The same for PSS. Guest pages are private anonymous memory, so they
    /// count fully in PSS as in RSS.
    pub fn overhead_pss_kib(&self) -> u64 {
        self.pss_kib.saturating_sub(self.guest_rss_kib)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When `bulkhead run` began its work.
    pub start_ns: u64,
    /// Phase name -> when it ended, in order.
    pub marks: Vec<(String, u64)>,
    /// When the VMM started its vCPUs (their first KVM_RUN follows within
    /// microseconds).
    pub first_kvm_run_ns: Option<u64>,
    /// The agent's milestones by the guest clock, if the agent sent them.
    pub guest: Option<GuestTimes>,
    /// When the host received the agent's `Started` reply, which carries
    /// `guest.started_ns`: the anchor from the guest clock to ours.
    pub started_reply_ns: Option<u64>,
    pub memory: Option<MemorySample>,
    /// Whether the VM was restored from a template or booted; absent in
    /// records of binaries from before warm start.
    #[serde(default)]
    pub boot: Option<BootKind>,
    /// The run had to make its template first (so its times include a
    /// boot), rather than finding one.
    #[serde(default)]
    pub template_built: bool,
}

/// How a run's VM came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootKind {
    /// Restored from a template.
    Warm,
    /// Booted the guest kernel.
    Cold,
}

impl RunRecord {
    /// When phase `name` ended, if the run got that far.
    pub fn mark(&self, name: &str) -> Option<u64> {
        self.marks.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<RunRecord> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a run record", path.display()))
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would show as an absurd
    // phase rather than abort a run.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64)
        .unwrap_or(0)
}

/// An `Instant` (CLOCK_MONOTONIC underneath, but opaque) as monotonic ns.
/// Every conversion goes through one anchor, so differences between
/// converted instants are exact.
pub fn instant_ns(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (anchor, anchor_ns) = *ANCHOR.get_or_init(|| (Instant::now(), monotonic_ns()));
    match at.checked_duration_since(anchor) {
        Some(after) => anchor_ns + after.as_nanos() as u64,
        None => anchor_ns.saturating_sub(anchor.duration_since(at).as_nanos() as u64),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instants_map_onto_the_monotonic_clock() {
        let before = monotonic_ns();
        let at = Instant::now();
        let after = monotonic_ns();
        let ns = instant_ns(at);
        // Within the two clock reads of the anchor (a few microseconds);
        // 10 ms of slack so a descheduled test does not fail.
        assert!(ns + 10_000_000 >= before && ns <= after + 10_000_000);
        let earlier = instant_ns(at - Duration::from_millis(3));
        assert_eq!(ns - earlier, 3_000_000);
        let later = instant_ns(at + Duration::from_secs(1));
        assert_eq!(later - ns, 1_000_000_000);
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let record = RunRecord {
            start_ns: 1,
            marks: vec![(mark::IMAGE.into(), 2), (mark::VM_GONE.into(), 9)],
            first_kvm_run_ns: Some(3),
            guest: Some(GuestTimes {
                agent_start_ns: 4,
                agent_ready_ns: 5,
                started_ns: 6,
            }),
            started_reply_ns: Some(7),
            memory: Some(MemorySample {
                rss_kib: 100,
                pss_kib: 90,
                guest_rss_kib: 60,
                guest_size_kib: 131072,
            }),
            boot: Some(BootKind::Warm),
            template_built: true,
        };
        record.write(&path).unwrap();
        let back = RunRecord::read(&path).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.mark(mark::VM_GONE), Some(9));
        assert_eq!(back.mark(mark::DISKS), None);
        assert_eq!(back.memory.unwrap().overhead_rss_kib(), 40);
        assert_eq!(back.memory.unwrap().overhead_pss_kib(), 30);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["boot"], "warm");
    }

    #[test]
    fn older_records_have_no_boot_kind() {
        let old = r#"{"start_ns":1,"marks":[],"first_kvm_run_ns":null,"guest":null,
            "started_reply_ns":null,"memory":null}"#;
        let r: RunRecord = serde_json::from_str(old).unwrap();
        assert_eq!((r.boot, r.template_built), (None, false));
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{").unwrap();
        let e = RunRecord::read(&path).unwrap_err();
        assert!(format!("{e:#}").contains("bad.json"));
    }
}
