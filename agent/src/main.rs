//! bulkhead-agent: PID 1 of the microVM. It mounts the system
//! filesystems, listens on vsock for the host, builds the container the
//! host asks for, relays its stdio and exit status, and powers off.
//!
//! With `--no-init --listen-unix PATH` the same logic runs as an ordinary
//! process on a host, which is how it is tested.

mod clock;
mod config;
mod container;
mod init;
mod log;
mod prefault;
mod reaper;
mod refresh;
mod server;
mod stdio;
mod trace;
mod transport;

use std::process::ExitCode;

use crate::config::{Config, ConfigError, USAGE};
use crate::container::prepared::Prepared;
use crate::container::spawn::Stack;
use crate::container::Settings;
use crate::log::agent_log;
use crate::reaper::Reaper;
use crate::refresh::Refresher;
use crate::server::Server;
use crate::transport::Listener;

fn main() -> ExitCode {
    // First thing: the moment the kernel handed over to /init.
    let started_at = clock::boottime_ns();
    let config = match Config::from_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(ConfigError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Under init a bad command line must not kill PID 1, and
            // `from_args` accepts anything there; so this is a host run.
            eprintln!("bulkhead-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = run(&config, started_at);
    if config.init {
        match &result {
            // Shutdown flushed the volumes; the host is killing the VM, and
            // syncing the scratch disk would only delay the fallback.
            Ok(()) => init::power_off(init::Flush::Skip),
            Err(e) => {
                agent_log!("fatal: {e}");
                init::power_off(init::Flush::All)
            }
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            agent_log!("fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config, started_at: u64) -> Result<(), Box<dyn std::error::Error>> {
    if config.init {
        init::install_panic_hook();
        init::setup()?;
    } else {
        // Stand-in for PID 1: orphans of the container get re-parented
        // to us and reaped.
        nix::sys::prctl::set_child_subreaper(true)?;
        // Our own mount namespace: the containers' storage mounts stay
        // out of the host's, and vanish with us even if we are killed.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
        container::rootfs::make_private()?;
    }
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        format!(
            "cannot create state dir {}: {e}",
            config.state_dir.display()
        )
    })?;
    let reaper = Reaper::new()?;
    // Work every container would otherwise repeat, done once here: before
    // a template snapshot, so every clone starts with it done.
    let stack = Stack::new().map_err(|e| format!("cannot map the container init's stack: {e}"))?;
    container::capabilities::last_cap();
    // The request buffer and frames of the serve loop; one output chunk.
    prefault::stack(96 << 10);
    prefault::heap(bulkhead_protocol::MAX_DATA_CHUNK);
    let guest = if config.init {
        Some((
            Refresher::open(std::path::Path::new("/dev/urandom"))?,
            Prepared::make(config.cgroup_root.as_deref()),
        ))
    } else {
        None
    };
    let listener = Listener::bind(&config.listen)?;
    init::announce_ready();
    let ready_at = clock::boottime_ns();
    let settings = Settings {
        state_dir: config.state_dir.clone(),
        cgroup_root: config.cgroup_root.clone(),
    };
    let mut server =
        Server::new(listener, reaper, settings, stack).with_boot_times(started_at, ready_at);
    if let Some((refresher, prepared)) = guest {
        server = server.for_guest_init(refresher, prepared);
    }
    server.run();
    Ok(())
}
