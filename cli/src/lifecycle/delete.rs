//! delete: the container's VM gone (with `force`, even while it runs), its
//! poststop hooks run, its directory removed.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::control::{self, Request};
use super::hooks;
use super::state::{monitor_alive, Locked, Record, Status};

/// How long the monitor may take to end its VM after SIGKILL went to the
/// container, before the monitor itself is killed.
const MONITOR_GRACE: Duration = Duration::from_secs(10);

pub fn delete(c: Locked, force: bool) -> anyhow::Result<()> {
    let record = c.current()?;
    match record.status {
        Status::Stopped => {}
        // As runc: a container that never started can go without --force.
        Status::Created | Status::Creating => end_monitor(&c, &record),
        Status::Running | Status::Paused if force => end_monitor(&c, &record),
        Status::Running | Status::Paused => bail!(
            "cannot delete container {} that is not stopped: {}",
            c.id(),
            record.status.as_str()
        ),
    }
    let mut record = record;
    record.status = Status::Stopped;
    let poststop = record.hooks.as_ref().and_then(|h| h.poststop().clone());
    c.remove()?;
    // Like runc, a failing poststop hook is reported, not fatal: the
    // container is gone either way.
    if let Some(list) = poststop {
        if let Err(e) = hooks::run_all("poststop", &list, &record) {
            eprintln!("bulkhead: {e:#}");
        }
    }
    Ok(())
}

/// Stops the monitor: SIGKILL to the container (the monitor then ends the
/// VM and exits), then to the monitor itself if it lingers.
pub fn end_monitor(c: &Locked, record: &Record) {
    if !monitor_alive(c.dir()) {
        return;
    }
    let _ = control::send(
        c.dir(),
        Request::Kill {
            signal: libc::SIGKILL,
            all: false,
        },
    );
    if wait_gone(c, MONITOR_GRACE) {
        return;
    }
    if let Some(pid) = record.pid {
        log::debug!("killing the monitor {pid} of {}", c.id());
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        wait_gone(c, MONITOR_GRACE);
    }
}

/// Waits until the container's monitor has exited.
pub fn wait_gone(c: &Locked, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while monitor_alive(c.dir()) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
