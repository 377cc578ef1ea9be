//! The connection loop: one single-threaded poll loop over the listener,
//! SIGCHLD, and every connection with its process's stdio.
//!
//! The first connection is the *main* one ([`session`]): it creates and
//! runs the container. While it holds a container, further connections are
//! *side* connections ([`side`]) that exec processes into the container or
//! ask about it; otherwise they wait in the listen backlog until the main
//! connection ends, and the next one becomes main. Each connection queues
//! what it sends ([`link`]), so no host reader can stall another's.

mod link;
mod relay;
mod session;
mod side;

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use bulkhead_protocol::AgentMessage;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use self::link::Link;
use self::relay::{Channel, Ready};
use self::session::{Session, Shutdown};
use self::side::Side;
use crate::container::prepared::Prepared;
use crate::container::spawn::Stack;
use crate::container::{Container, Settings};
use crate::log::agent_log;
use crate::reaper::Reaper;
use crate::refresh::Refresher;
use crate::transport::Listener;

/// How long the agent waits, after acknowledging Shutdown, for the host
/// to hang up. Powering off at once could drop the acknowledgement still
/// queued in the vsock transport.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// How long a closing connection may take to write its last replies (an
/// error explaining why it closes).
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Side connections served at once; more wait in the listen backlog.
const MAX_SIDES: usize = 64;

/// Why the serve loop returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The host asked to shut down.
    Shutdown,
}

pub struct Server {
    listener: Listener,
    reaper: Reaper,
    settings: Settings,
    /// The stack of the container init and of exec'd processes, made once
    /// at start-up.
    stack: Stack,
    /// The cgroup and network namespace made before the template snapshot.
    prepared: Prepared,
    /// Applies Refresh; `None` on a host, whose RNG, clock and name are
    /// not the agent's to change (Refresh is then checked and answered).
    refresher: Option<Refresher>,
    /// The VM ends right after Shutdown: skip the teardown (unmounts,
    /// cgroup removal) nobody will see.
    powers_off: bool,
    next_id: u64,
    /// The agent's start and ready times, by the guest clock.
    boot_times: Option<(u64, u64)>,
}

/// Whose descriptor a poll entry is.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Reaper,
    Listener,
    Main(Channel),
    Side(usize, Channel),
}

/// What one poll round found ready.
#[derive(Default)]
struct Round {
    child: bool,
    connection: bool,
    main: Ready,
    sides: Vec<Ready>,
}

impl Server {
    pub fn new(listener: Listener, reaper: Reaper, settings: Settings, stack: Stack) -> Server {
        Server {
            listener,
            reaper,
            settings,
            stack,
            prepared: Prepared::none(),
            refresher: None,
            powers_off: false,
            next_id: 0,
            boot_times: None,
        }
    }

    /// Runs as the guest's PID 1: Refresh is applied with `refresher`, and
    /// the VM powers off after Shutdown, so containers are not torn down.
    pub fn for_guest_init(mut self, refresher: Refresher, prepared: Prepared) -> Server {
        self.refresher = Some(refresher);
        self.prepared = prepared;
        self.powers_off = true;
        self
    }

    /// Reports `started` and `ready` (CLOCK_BOOTTIME ns) with every
    /// `Started` reply, so the host can time the guest's boot phases.
    pub fn with_boot_times(mut self, started: u64, ready: u64) -> Server {
        self.boot_times = Some((started, ready));
        self
    }

    /// Serves connections until the main one asks for shutdown.
    pub fn run(&mut self) -> Outcome {
        let mut main: Option<Session> = None;
        let mut sides: Vec<Side> = Vec::new();
        loop {
            // Statuses reaped meanwhile (a container's teardown reaps too).
            self.collect_exits(&mut main, &mut sides);
            self.send_exits(&mut main, &mut sides);
            let round = self.poll(main.as_ref(), &sides);
            if round.child {
                // Orphans are dropped. The rest reach their sessions before
                // any request is handled: an Exec must not target an init
                // that is already reaped.
                self.reaper.reap();
                self.collect_exits(&mut main, &mut sides);
            }
            // The main connection first: a host that hung up on it and
            // connected anew must find the new connection to be the main.
            if let Some(Shutdown) = self.serve_main(&mut main, round.main) {
                for s in sides.drain(..) {
                    s.close(&mut self.reaper, Duration::ZERO);
                }
                if let Some(m) = main.take() {
                    m.shut_down(&mut self.reaper, self.powers_off);
                }
                return Outcome::Shutdown;
            }
            self.serve_sides(main.as_ref(), &mut sides, &round.sides);
            if round.connection {
                self.accept(&mut main, &mut sides);
            }
        }
    }

    /// Sends the exits that are complete; a connection that fails to take
    /// one ends.
    fn send_exits(&mut self, main: &mut Option<Session>, sides: &mut Vec<Side>) {
        if let Some(m) = main {
            if m.send_exit_if_done().is_err() {
                if let Some(m) = main.take() {
                    m.close(&mut self.reaper);
                }
            }
        }
        // Backwards, so that removing one moves only one already seen.
        for i in (0..sides.len()).rev() {
            if sides[i].send_exit_if_done().is_err() {
                sides.swap_remove(i).close(&mut self.reaper, CLOSE_DRAIN);
            }
        }
    }

    /// Serves the main connection's ready descriptors; it ends when the
    /// host hangs up (or breaks the protocol) or asks for Shutdown.
    fn serve_main(&mut self, main: &mut Option<Session>, ready: Ready) -> Option<Shutdown> {
        let m = main.as_mut()?;
        match m.on_ready(ready, self) {
            Ok(shutdown) => shutdown,
            Err(_) => {
                if let Some(m) = main.take() {
                    m.close(&mut self.reaper);
                }
                None
            }
        }
    }

    /// Serves the side connections' ready descriptors (`ready` by their
    /// index at poll time); those that end are closed.
    fn serve_sides(&mut self, main: Option<&Session>, sides: &mut Vec<Side>, ready: &[Ready]) {
        // Backwards, so that removing one leaves the indices still to come.
        for i in (0..sides.len()).rev() {
            let r = ready.get(i).copied().unwrap_or_default();
            if sides[i].on_ready(r, main, self).is_err() {
                sides.swap_remove(i).close(&mut self.reaper, CLOSE_DRAIN);
            }
        }
    }

    /// Hands reaped statuses to the sessions whose processes they are.
    fn collect_exits(&mut self, main: &mut Option<Session>, sides: &mut [Side]) {
        if let Some(m) = main {
            m.collect_exit(&mut self.reaper);
        }
        for s in sides {
            s.collect_exit(&mut self.reaper);
        }
    }

    /// Waits for the next events: the listener while a connection would
    /// be served (no main connection yet, or a main one holding a
    /// container), SIGCHLD, and every connection's descriptors.
    fn poll(&self, main: Option<&Session>, sides: &[Side]) -> Round {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut owners: Vec<Owner> = Vec::new();
        fds.push(PollFd::new(self.reaper.as_fd(), PollFlags::POLLIN));
        owners.push(Owner::Reaper);
        if self.accepts(main, sides.len()) {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            owners.push(Owner::Listener);
        }
        if let Some(m) = main {
            m.watch(&mut |fd: BorrowedFd<'_>, flags, channel| {
                fds.push(PollFd::new(fd, flags));
                owners.push(Owner::Main(channel));
            });
        }
        for (i, s) in sides.iter().enumerate() {
            s.watch(&mut |fd: BorrowedFd<'_>, flags, channel| {
                fds.push(PollFd::new(fd, flags));
                owners.push(Owner::Side(i, channel));
            });
        }
        let mut round = Round {
            sides: vec![Ready::default(); sides.len()],
            ..Round::default()
        };
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => return round,
            Err(e) => {
                agent_log!("poll failed: {e}");
                return round;
            }
        }
        for (fd, owner) in fds.iter().zip(&owners) {
            if fd.revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            match *owner {
                Owner::Reaper => round.child = true,
                Owner::Listener => round.connection = true,
                Owner::Main(channel) => round.main.mark(channel),
                Owner::Side(i, channel) => {
                    if let Some(r) = round.sides.get_mut(i) {
                        r.mark(channel)
                    }
                }
            }
        }
        round
    }

    /// Whether a connection arriving now would be served.
    fn accepts(&self, main: Option<&Session>, sides: usize) -> bool {
        match main {
            None => true,
            Some(m) => m.holds_container() && sides < MAX_SIDES,
        }
    }

    /// Takes the waiting connection as the main one or a side one, by the
    /// state after this round's events (the main connection may have just
    /// ended, or its container gone).
    fn accept(&mut self, main: &mut Option<Session>, sides: &mut Vec<Side>) {
        if !self.accepts(main.as_ref(), sides.len()) {
            return;
        }
        let link = match self.listener.accept().and_then(Link::new) {
            Ok(link) => link,
            Err(e) => {
                agent_log!("accept failed: {e}");
                return;
            }
        };
        match main {
            None => *main = Some(Session::new(link)),
            Some(_) => sides.push(Side::new(link)),
        }
    }

    fn container_id(&mut self) -> String {
        self.next_id += 1;
        // The agent pid keeps ids unique among agents sharing a cgroup root
        // (host tests); in the guest it is always 1.
        format!("bulkhead-{}-{}", std::process::id(), self.next_id)
    }
}

/// The reply to ListProcesses about `container`.
fn answer_processes(container: Option<&Container>) -> AgentMessage {
    let Some(c) = container else {
        return AgentMessage::Error {
            message: "no container".into(),
        };
    };
    match c.processes() {
        Ok(pids) => AgentMessage::Processes { pids },
        Err(e) => AgentMessage::Error {
            message: e.to_string(),
        },
    }
}

/// The reply to Freeze about `container`.
fn answer_freeze(container: Option<&Container>, frozen: bool) -> AgentMessage {
    let result = match container {
        None => Err("container is not running".to_string()),
        Some(c) => c.freeze(frozen).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => AgentMessage::Frozen { frozen },
        Err(message) => AgentMessage::Error { message },
    }
}
