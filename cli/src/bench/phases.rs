//! Turns one `bulkhead run` child's record into phase durations.
//!
//! Host timestamps (CLOCK_MONOTONIC) come from the bench (child spawned,
//! child reaped) and the child (vCPUs started, agent's replies received).
//! The agent's own milestones are guest CLOCK_BOOTTIME readings; they are
//! placed on the host clock by the `Started` reply, which carries the guest
//! time it was sent at and whose arrival the host timestamps. The guest
//! clock's origin, so mapped, lands after the first KVM_RUN (the kernel sets
//! its clock up a while into boot); a mapped milestone before the first
//! KVM_RUN would be a broken anchor and is rejected.

use bulkhead_protocol::GuestTimes;

use crate::run::record::{mark, RunRecord};

/// The phases of a cold run, in order; their durations add up to the total.
pub const PHASES: [&str; 6] = [
    "vmm start",
    "kernel boot",
    "agent init",
    "container start",
    "container run",
    "vm teardown",
];
/// The phases of a warm run (a restored template), in order; they add up
/// to the total. The agent's boot milestones belong to the template's boot
/// long ago, so these come from host instants only.
pub const WARM_PHASES: [&str; 6] = [
    "host setup",
    "vm restore",
    "agent connect",
    "container start",
    "container run",
    "vm teardown",
];
pub const TOTAL: &str = "total";
pub const BOOT_TO_AGENT: &str = "boot to agent ready";
/// Process start to a connected agent: what warm and cold runs share.
pub const TO_AGENT_CONNECTED: &str = "start to agent connected";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhaseError {
    #[error("the run recorded no {0}")]
    Missing(&'static str),
    #[error("the agent reported no boot milestones (an older agent?)")]
    NoGuestTimes,
    #[error("the guest clock maps {what} to {ns} ns before the first KVM_RUN")]
    BeforeKvmRun { what: &'static str, ns: u64 },
    #[error("timestamps out of order: {0}")]
    OutOfOrder(&'static str),
}

/// Where a cold run's time went.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdRun {
    /// `(phase, ms)` for each of [`PHASES`].
    pub phases: Vec<(&'static str, f64)>,
    pub total_ms: f64,
    /// Process start to the agent's ready marker.
    pub boot_to_agent_ms: f64,
    /// How long after the first KVM_RUN the guest clock read zero.
    pub guest_clock_origin_ms: f64,
}

/// Where a warm run's time went.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmRun {
    /// `(phase, ms)` for each of [`WARM_PHASES`].
    pub phases: Vec<(&'static str, f64)>,
    pub total_ms: f64,
    /// Process start to a connected agent.
    pub agent_connected_ms: f64,
}

/// Host CLOCK_MONOTONIC ns of guest time `guest_ns`, anchored by the
/// `Started` reply (guest `started_ns`, received at host `reply_ns`).
pub fn guest_to_host(guest: &GuestTimes, reply_ns: u64, guest_ns: u64) -> i128 {
    reply_ns as i128 - (guest.started_ns as i128 - guest_ns as i128)
}

fn ms(from: i128, to: i128) -> f64 {
    (to - from) as f64 / 1e6
}

/// The phases of a child spawned at `spawn_ns` and reaped at `exit_ns`.
pub fn cold_run(spawn_ns: u64, exit_ns: u64, rec: &RunRecord) -> Result<ColdRun, PhaseError> {
    let kvm_run = rec
        .first_kvm_run_ns
        .ok_or(PhaseError::Missing("first KVM_RUN"))? as i128;
    let guest = rec.guest.as_ref().ok_or(PhaseError::NoGuestTimes)?;
    let reply = rec
        .started_reply_ns
        .ok_or(PhaseError::Missing("Started reply"))?;
    let get = |name: &'static str| {
        rec.mark(name)
            .map(i128::from)
            .ok_or(PhaseError::Missing(name))
    };
    let started = get(mark::CONTAINER_STARTED)?;
    let exited = get(mark::EXITED)?;
    if guest.agent_start_ns > guest.agent_ready_ns || guest.agent_ready_ns > guest.started_ns {
        return Err(PhaseError::OutOfOrder("agent milestones"));
    }
    let to_host = |g| guest_to_host(guest, reply, g);
    let origin = to_host(0);
    let agent_start = to_host(guest.agent_start_ns);
    let agent_ready = to_host(guest.agent_ready_ns);
    if agent_start < kvm_run {
        return Err(PhaseError::BeforeKvmRun {
            what: "the agent's start",
            ns: (kvm_run - agent_start) as u64,
        });
    }
    let (spawn, exit) = (spawn_ns as i128, exit_ns as i128);
    let points = [
        spawn,
        kvm_run,
        agent_start,
        agent_ready,
        started,
        exited,
        exit,
    ];
    if points.windows(2).any(|w| w[0] > w[1]) {
        return Err(PhaseError::OutOfOrder(
            "spawn, KVM_RUN, agent start, ready, started, exited, reaped",
        ));
    }
    let phases = PHASES
        .iter()
        .zip(points.windows(2))
        .map(|(name, w)| (*name, ms(w[0], w[1])))
        .collect();
    Ok(ColdRun {
        phases,
        total_ms: ms(spawn, exit),
        boot_to_agent_ms: ms(spawn, agent_ready),
        guest_clock_origin_ms: ms(kvm_run, origin),
    })
}

/// The phases of a restored run spawned at `spawn_ns`, reaped at `exit_ns`.
pub fn warm_run(spawn_ns: u64, exit_ns: u64, rec: &RunRecord) -> Result<WarmRun, PhaseError> {
    let get = |name: &'static str| rec.mark(name).ok_or(PhaseError::Missing(name));
    let vcpus = rec
        .first_kvm_run_ns
        .ok_or(PhaseError::Missing("first KVM_RUN"))?;
    let connected = get(mark::AGENT_CONNECTED)?;
    let points = [
        spawn_ns,
        get(mark::DISKS)?,
        vcpus,
        connected,
        get(mark::CONTAINER_STARTED)?,
        get(mark::EXITED)?,
        exit_ns,
    ];
    if points.windows(2).any(|w| w[0] > w[1]) {
        return Err(PhaseError::OutOfOrder(
            "spawn, disks, vcpus started, agent connected, started, exited, reaped",
        ));
    }
    let ms = |from: u64, to: u64| (to - from) as f64 / 1e6;
    Ok(WarmRun {
        phases: WARM_PHASES
            .iter()
            .zip(points.windows(2))
            .map(|(name, w)| (*name, ms(w[0], w[1])))
            .collect(),
        total_ms: ms(spawn_ns, exit_ns),
        agent_connected_ms: ms(spawn_ns, connected),
    })
}

/// Process start to a connected agent, for any run that got that far.
pub fn agent_connected_ms(spawn_ns: u64, rec: &RunRecord) -> Option<f64> {
    let at = rec.mark(mark::AGENT_CONNECTED)?;
    Some(at.checked_sub(spawn_ns)? as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A run whose host clock reads 1000 s at spawn; the guest clock starts
    /// 50 ms after the first KVM_RUN.
    fn record() -> RunRecord {
        let t0 = 1_000_000 * MS;
        let kvm_run = t0 + 100 * MS;
        let guest_zero = kvm_run + 50 * MS;
        RunRecord {
            start_ns: t0 + 2 * MS,
            marks: vec![
                (mark::IMAGE.into(), t0 + 10 * MS),
                (mark::CONTAINER_STARTED.into(), guest_zero + 3_000 * MS + MS),
                (mark::EXITED.into(), guest_zero + 3_200 * MS),
                (mark::VM_GONE.into(), guest_zero + 3_300 * MS),
            ],
            first_kvm_run_ns: Some(kvm_run),
            guest: Some(GuestTimes {
                agent_start_ns: 2_000 * MS,
                agent_ready_ns: 2_500 * MS,
                started_ns: 3_000 * MS,
            }),
            // The reply took 1 ms to reach the host.
            started_reply_ns: Some(guest_zero + 3_000 * MS + MS),
            memory: None,
            boot: None,
            template_built: false,
        }
    }

    fn spawn() -> u64 {
        1_000_000 * MS
    }

    #[test]
    fn guest_times_land_on_the_host_clock() {
        let rec = record();
        let g = rec.guest.unwrap();
        let reply = rec.started_reply_ns.unwrap();
        assert_eq!(guest_to_host(&g, reply, g.started_ns), reply as i128);
        // 1 ms of reply latency shows up as a 1 ms late origin.
        assert_eq!(
            guest_to_host(&g, reply, 0),
            (rec.first_kvm_run_ns.unwrap() + 51 * MS) as i128
        );
    }

    #[test]
    fn phases_add_up_to_the_total() {
        let run = cold_run(spawn(), spawn() + 3_500 * MS, &record()).unwrap();
        let names: Vec<_> = run.phases.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, PHASES);
        let get = |n| run.phases.iter().find(|(p, _)| *p == n).unwrap().1;
        assert_eq!(get("vmm start"), 100.0);
        // KVM_RUN -> guest 0 (51 ms incl. latency) -> agent start at 2000 ms.
        assert_eq!(get("kernel boot"), 2_051.0);
        assert_eq!(get("agent init"), 500.0);
        assert_eq!(get("container start"), 500.0);
        assert_eq!(get("container run"), 199.0);
        assert_eq!(
            get("vm teardown"),
            3_500.0 - 100.0 - 51.0 - 3_000.0 + 1.0 - 200.0
        );
        let sum: f64 = run.phases.iter().map(|(_, v)| v).sum();
        assert!((sum - run.total_ms).abs() < 1e-9);
        assert_eq!(run.total_ms, 3_500.0);
        assert_eq!(run.boot_to_agent_ms, 100.0 + 51.0 + 2_500.0);
        assert_eq!(run.guest_clock_origin_ms, 51.0);
    }

    #[test]
    fn missing_pieces_are_named() {
        let mut rec = record();
        rec.guest = None;
        assert_eq!(
            cold_run(spawn(), spawn() + 4_000 * MS, &rec),
            Err(PhaseError::NoGuestTimes)
        );
        let mut rec = record();
        rec.first_kvm_run_ns = None;
        assert_eq!(
            cold_run(spawn(), spawn() + 4_000 * MS, &rec),
            Err(PhaseError::Missing("first KVM_RUN"))
        );
        let mut rec = record();
        rec.marks.retain(|(n, _)| n != mark::EXITED);
        assert_eq!(
            cold_run(spawn(), spawn() + 4_000 * MS, &rec),
            Err(PhaseError::Missing(mark::EXITED))
        );
    }

    #[test]
    fn a_guest_clock_before_kvm_run_is_rejected() {
        let mut rec = record();
        // The agent claims it started 10 s before it replied: earlier than
        // the VM ran at all.
        rec.guest.as_mut().unwrap().agent_start_ns = 0;
        rec.guest.as_mut().unwrap().started_ns = 10_000 * MS;
        rec.guest.as_mut().unwrap().agent_ready_ns = 9_000 * MS;
        assert!(matches!(
            cold_run(spawn(), spawn() + 4_000 * MS, &rec),
            Err(PhaseError::BeforeKvmRun { .. })
        ));
    }

    #[test]
    fn disordered_timestamps_are_rejected() {
        // Reaped before the container exited.
        assert!(matches!(
            cold_run(spawn(), spawn() + 1_000 * MS, &record()),
            Err(PhaseError::OutOfOrder(_))
        ));
        let mut rec = record();
        rec.guest.as_mut().unwrap().agent_ready_ns = 1;
        assert_eq!(
            cold_run(spawn(), spawn() + 4_000 * MS, &rec),
            Err(PhaseError::OutOfOrder("agent milestones"))
        );
    }

    /// A restored run: spawned at 1000 s, vCPUs 20 ms in, the agent's
    /// (template-era) milestones seconds before that.
    fn warm_record() -> RunRecord {
        let t0 = 1_000_000 * MS;
        RunRecord {
            start_ns: t0 + 2 * MS,
            marks: vec![
                (mark::IMAGE.into(), t0 + 5 * MS),
                (mark::DISKS.into(), t0 + 10 * MS),
                (mark::VM_BUILD.into(), t0 + 30 * MS),
                (mark::AGENT_CONNECTED.into(), t0 + 50 * MS),
                (mark::CONTAINER_STARTED.into(), t0 + 2_050 * MS),
                (mark::EXITED.into(), t0 + 2_150 * MS),
                (mark::VM_GONE.into(), t0 + 2_160 * MS),
            ],
            first_kvm_run_ns: Some(t0 + 30 * MS),
            guest: Some(GuestTimes {
                agent_start_ns: 1_000 * MS,
                agent_ready_ns: 2_000 * MS,
                started_ns: 90_000 * MS,
            }),
            started_reply_ns: Some(t0 + 2_050 * MS),
            memory: None,
            boot: Some(crate::run::record::BootKind::Warm),
            template_built: false,
        }
    }

    #[test]
    fn warm_phases_add_up_to_the_total() {
        let run = warm_run(spawn(), spawn() + 2_200 * MS, &warm_record()).unwrap();
        let names: Vec<_> = run.phases.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, WARM_PHASES);
        let values: Vec<_> = run.phases.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [10.0, 20.0, 20.0, 2_000.0, 100.0, 50.0]);
        assert_eq!(run.total_ms, 2_200.0);
        assert_eq!(run.agent_connected_ms, 50.0);
        assert_eq!(agent_connected_ms(spawn(), &warm_record()), Some(50.0));
        assert_eq!(agent_connected_ms(spawn() + 60 * MS, &warm_record()), None);
    }

    #[test]
    fn warm_runs_need_host_marks_in_order() {
        let mut rec = warm_record();
        rec.marks.retain(|(n, _)| n != mark::AGENT_CONNECTED);
        assert_eq!(
            warm_run(spawn(), spawn() + 2_200 * MS, &rec),
            Err(PhaseError::Missing(mark::AGENT_CONNECTED))
        );
        // Reaped before it exited.
        assert!(matches!(
            warm_run(spawn(), spawn() + 2_000 * MS, &warm_record()),
            Err(PhaseError::OutOfOrder(_))
        ));
    }
}
