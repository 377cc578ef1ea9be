//! exec: one more process in a running container, on a side connection to
//! its agent made by the command itself (the monitor is not involved), so
//! the command lives exactly as long as that process and exits with its
//! status.

use anyhow::bail;
use bulkhead_protocol::ProcessSpec;

use super::agent::{forward_stdin, Session};
use super::boot::vsock_socket;
use super::signals::SignalRouter;
use super::state::{Exit, Locked, Status};
use super::tty;

/// Where the exec'd process is in its container.
pub struct Target {
    pub uds: std::path::PathBuf,
}

/// Checks that `c` runs and says how to reach its agent. The lock need
/// not be held while the process runs.
pub fn target(c: &Locked) -> anyhow::Result<Target> {
    let record = c.current()?;
    match record.status {
        Status::Running => Ok(Target {
            uds: vsock_socket(c.dir()),
        }),
        Status::Paused => bail!("container {} is paused", c.id()),
        status => bail!(
            "cannot exec in container {}: it is {}, not running",
            c.id(),
            status.as_str()
        ),
    }
}

/// Runs `process` in the target, our stdio its stdio (stdin only when
/// `interactive`); signals we get go to it. Returns how it ended.
pub fn exec(target: &Target, process: &ProcessSpec, interactive: bool) -> anyhow::Result<Exit> {
    let router = SignalRouter::install()?;
    let mut session = Session::exec(&target.uds, process)?;
    let writer = session.writer();
    router.set_container(writer.clone(), process.terminal);
    let _raw = if process.terminal {
        tty::RawMode::enter()
    } else {
        None
    };
    if interactive {
        forward_stdin(writer);
    } else if let Ok(mut w) = writer.lock() {
        w.close_stdin()?;
    }
    Ok(session.pump_output(|| {})?.termination.into())
}
