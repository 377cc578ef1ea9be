//! create: the container's VM up and the container built in it, its
//! process not yet running. Runs in the process that will hold the VM for
//! the container's life (`bulkhead run` itself, or a monitor).

use std::path::Path;

use super::agent::{connect_agent, Pending, Refresh};
use super::boot::{boot, Boot, Booted};
use super::monitor::{self, MonitorStdio};
use super::plan::Plan;
use super::signals::SignalRouter;
use super::state::{Locked, Record, Root, Status, PLAN};
use crate::run::record::mark;

/// A container built in its VM, waiting for `start`.
pub struct Created {
    pub(super) booted: Booted,
    pub(super) pending: Pending,
}

/// Builds `plan`'s VM with its files in `dir` and the container in it.
/// `on_phase` is told when each phase ends (for timings).
pub fn create(
    plan: &Plan,
    dir: &Path,
    router: &SignalRouter,
    on_phase: &mut dyn FnMut(&'static str),
) -> anyhow::Result<Created> {
    let booted = boot(plan, dir, router)?;
    on_phase(mark::VM_BUILD);
    let stream = match connect_agent(&booted.uds, &booted.vm) {
        Ok(s) => s,
        Err(e) => return Err(booted.explain(e)),
    };
    on_phase(mark::AGENT_CONNECTED);
    // Every clone of a template wakes with the same RNG and a stale clock.
    let refresh = match &booted.boot {
        Boot::Warm { .. } => Some(Refresh::now(plan.spec.hostname.clone())?),
        Boot::Cold => None,
    };
    let mut spec = plan.spec.clone();
    spec.network = booted.net.as_ref().map(|n| n.spec.clone());
    match Pending::create(stream, &spec, refresh) {
        Ok(pending) => Ok(Created { booted, pending }),
        Err(e) => Err(booted.explain(e)),
    }
}

/// Creates container `id` in `root` with its own monitor holding the VM
/// (what outlives the command): `build` makes the plan and record in the
/// container's new directory (its disks go there) and says where the
/// container's stdio goes, then the monitor starts and this waits until the container is built. On
/// failure nothing is left. Returns the directory, still locked, and the
/// record (status `created`, `pid` the monitor's).
pub fn create_detached(
    root: &Root,
    id: &str,
    build: impl FnOnce(&Path) -> anyhow::Result<(Plan, Record, MonitorStdio)>,
) -> anyhow::Result<(Locked, Record)> {
    let c = Locked::create(root, id)?;
    let result = (|| -> anyhow::Result<Record> {
        let (plan, mut record, stdio) = build(c.dir())?;
        plan.write(&c.dir().join(PLAN))?;
        c.save(&record)?;
        let pid = monitor::launch(root, id, stdio)?;
        record.pid = Some(pid as i32);
        record.status = Status::Created;
        c.save(&record)?;
        Ok(record)
    })();
    match result {
        Ok(record) => Ok((c, record)),
        Err(e) => {
            let _ = c.remove();
            Err(e)
        }
    }
}
