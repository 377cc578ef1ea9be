//! kill: a signal to the container's process (or, with `all`, to every
//! process in it), through its monitor.

use anyhow::bail;

use super::control::{self, Request};
use super::state::{Locked, Status};

pub fn kill(c: &Locked, signal: i32, all: bool) -> anyhow::Result<()> {
    let record = c.current()?;
    match record.status {
        Status::Created | Status::Running | Status::Paused => {
            control::send(c.dir(), Request::Kill { signal, all })
        }
        Status::Creating => bail!("container {} is still being created", c.id()),
        Status::Stopped => bail!("container {} is not running", c.id()),
    }
}
