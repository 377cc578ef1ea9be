//! pause and resume: the container's processes frozen (or thawed) through
//! their cgroup in the guest, as runc does with the host's.

use anyhow::bail;

use super::agent::side_client;
use super::boot::vsock_socket;
use super::state::{Locked, Status};

pub fn pause(c: &Locked) -> anyhow::Result<()> {
    set_frozen(c, true)
}

pub fn resume(c: &Locked) -> anyhow::Result<()> {
    set_frozen(c, false)
}

fn set_frozen(c: &Locked, frozen: bool) -> anyhow::Result<()> {
    let mut record = c.current()?;
    match (record.status, frozen) {
        (Status::Running, true) | (Status::Paused, false) => {}
        (Status::Paused, true) => bail!("container {} is already paused", c.id()),
        (Status::Running, false) => bail!("container {} is not paused", c.id()),
        (status, _) => bail!("container {} is {}, not running", c.id(), status.as_str()),
    }
    side_client(&vsock_socket(c.dir()))?.freeze(frozen)?;
    record.status = if frozen {
        Status::Paused
    } else {
        Status::Running
    };
    record.exit = None;
    c.save(&record)?;
    Ok(())
}

/// The guest pids of the container's processes.
pub fn processes(c: &Locked) -> anyhow::Result<Vec<u32>> {
    let record = c.current()?;
    if !matches!(record.status, Status::Running | Status::Paused) {
        bail!(
            "container {} is {}, not running",
            c.id(),
            record.status.as_str()
        );
    }
    Ok(side_client(&vsock_socket(c.dir()))?.list_processes()?)
}
