//! The connection loop: accepts one host connection at a time and serves
//! it with a single-threaded poll loop over the socket, the container's
//! stdio and SIGCHLD.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use bulkhead_protocol::{
    write_message, AgentMessage, FrameDecoder, GuestTimes, HostMessage, ProtocolError,
    PROTOCOL_VERSION,
};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::container::prepared::Prepared;
use crate::container::spawn::Stack;
use crate::container::{Container, Settings};
use crate::log::agent_log;
use crate::reaper::Reaper;
use crate::refresh::{Refresh, Refresher};
use crate::stdio::{ReadOutcome, Stream, STDIN_HIGH_WATER};
use crate::transport::{Connection, Listener};

/// How long the agent waits, after acknowledging Shutdown, for the host
/// to hang up. Powering off at once could drop the acknowledgement still
/// queued in the vsock transport.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

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
    /// The container init's stack, made once at start-up.
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

/// How a connection ended.
enum ConnectionEnd {
    Closed,
    Shutdown,
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

    /// Serves connections until one asks for shutdown.
    pub fn run(&mut self) -> Outcome {
        loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.reaper.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    agent_log!("poll failed: {e}");
                    continue;
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            let (conn_ready, child_ready) = (ready(&fds[0]), ready(&fds[1]));
            if child_ready {
                // Orphans re-parented to us while no container runs.
                self.reaper.reap(None);
            }
            if conn_ready {
                match self.listener.accept() {
                    Ok(conn) => {
                        if let ConnectionEnd::Shutdown = self.serve(conn) {
                            return Outcome::Shutdown;
                        }
                    }
                    Err(e) => agent_log!("accept failed: {e}"),
                }
            }
        }
    }

    fn serve(&mut self, conn: Connection) -> ConnectionEnd {
        let mut session = Session {
            conn,
            decoder: FrameDecoder::new(),
            greeted: false,
            container: None,
            finished: None,
            wait_requested: false,
        };
        let end = session.run(self);
        if let ConnectionEnd::Shutdown = end {
            session.conn.linger(SHUTDOWN_LINGER);
            if self.powers_off {
                // The volumes are flushed; the VM is about to end.
                return end;
            }
        }
        session.destroy_all();
        end
    }

    fn container_id(&mut self) -> String {
        self.next_id += 1;
        // The agent pid keeps ids unique among agents sharing a cgroup root
        // (host tests); in the guest it is always 1.
        format!("bulkhead-{}-{}", std::process::id(), self.next_id)
    }
}

/// Per-connection state.
struct Session {
    conn: Connection,
    decoder: FrameDecoder,
    greeted: bool,
    container: Option<Container>,
    /// A container whose exit was reported: torn down lazily (before the
    /// next one, or when the connection ends), so the host does not wait
    /// for unmounts, and skipped entirely when the VM powers off.
    finished: Option<Container>,
    wait_requested: bool,
}

/// What one poll round found ready.
#[derive(Default)]
struct Ready {
    conn: bool,
    child: bool,
    stdout: bool,
    stderr: bool,
    stdin: bool,
}

/// The connection is gone (or unusable); the session must end.
struct Disconnected;

impl Session {
    fn destroy_all(&mut self) {
        for c in [self.container.take(), self.finished.take()]
            .into_iter()
            .flatten()
        {
            c.destroy();
        }
    }

    fn run(&mut self, server: &mut Server) -> ConnectionEnd {
        loop {
            if self.send_exit_if_done().is_err() {
                return ConnectionEnd::Closed;
            }
            let ready = self.poll_once(&server.reaper);
            if ready.child {
                let watched = self.container.as_ref().and_then(Container::pid);
                if let Some(status) = server.reaper.reap(watched) {
                    if let Some(c) = &mut self.container {
                        c.set_exited(status);
                    }
                }
            }
            if let Err(Disconnected) = self.forward_output(&ready) {
                return ConnectionEnd::Closed;
            }
            if ready.stdin {
                if let Some(c) = &mut self.container {
                    c.stdio.flush_stdin();
                }
            }
            if ready.conn {
                match self.read_requests(server) {
                    Ok(Some(end)) => return end,
                    Ok(None) => {}
                    Err(Disconnected) => return ConnectionEnd::Closed,
                }
            }
        }
    }

    fn poll_once<'a>(&'a self, reaper: &'a Reaper) -> Ready {
        let mut fds: Vec<PollFd<'a>> = Vec::with_capacity(5);
        let mut slots: Vec<fn(&mut Ready)> = Vec::with_capacity(5);
        let mut add = |fd: BorrowedFd<'a>, flags, slot: fn(&mut Ready)| {
            fds.push(PollFd::new(fd, flags));
            slots.push(slot);
        };
        add(reaper.as_fd(), PollFlags::POLLIN, |r| r.child = true);
        let backlog = self
            .container
            .as_ref()
            .map_or(0, |c| c.stdio.stdin_backlog());
        if backlog < STDIN_HIGH_WATER {
            add(self.conn.as_fd(), PollFlags::POLLIN, |r| r.conn = true);
        }
        if let Some(c) = &self.container {
            if c.is_started() {
                if let Some(fd) = c.stdio.stdout_fd() {
                    add(fd, PollFlags::POLLIN, |r| r.stdout = true);
                }
                if let Some(fd) = c.stdio.stderr_fd() {
                    add(fd, PollFlags::POLLIN, |r| r.stderr = true);
                }
            }
            if let Some(fd) = c.stdio.stdin_fd_to_flush() {
                add(fd, PollFlags::POLLOUT, |r| r.stdin = true);
            }
        }
        let mut ready = Ready::default();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                for (fd, slot) in fds.iter().zip(&slots) {
                    if fd.revents().is_some_and(|r| !r.is_empty()) {
                        slot(&mut ready);
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => agent_log!("poll failed: {e}"),
        }
        ready
    }

    fn send(&mut self, msg: &AgentMessage) -> Result<(), Disconnected> {
        write_message(&mut self.conn, msg).map_err(|e| {
            agent_log!("lost the host connection: {e}");
            Disconnected
        })
    }

    fn forward_output(&mut self, ready: &Ready) -> Result<(), Disconnected> {
        for (is_ready, stream) in [
            (ready.stdout, Stream::Stdout),
            (ready.stderr, Stream::Stderr),
        ] {
            if !is_ready {
                continue;
            }
            let Some(c) = &mut self.container else {
                return Ok(());
            };
            if let ReadOutcome::Data(data) = c.stdio.read(stream) {
                let msg = match stream {
                    Stream::Stdout => AgentMessage::Stdout(data),
                    Stream::Stderr => AgentMessage::Stderr(data),
                };
                self.send(&msg)?;
            }
        }
        Ok(())
    }

    /// Sends the exit status once the process exited, its output is fully
    /// forwarded and the host asked for it; the container is then gone.
    fn send_exit_if_done(&mut self) -> Result<(), Disconnected> {
        let Some(c) = &self.container else {
            return Ok(());
        };
        if !self.wait_requested || !c.stdio.outputs_done() {
            return Ok(());
        }
        let Some(status) = c.exit_status() else {
            return Ok(());
        };
        self.wait_requested = false;
        let Some(mut c) = self.container.take() else {
            return Ok(());
        };
        let steps = c.exit_steps();
        // The teardown waits: the host should not wait for our cleanup.
        self.finished = Some(c);
        self.send(&AgentMessage::Exit { status, steps })
    }

    fn read_requests(
        &mut self,
        server: &mut Server,
    ) -> Result<Option<ConnectionEnd>, Disconnected> {
        let mut buf = [0u8; 64 * 1024];
        let n = loop {
            match self.conn.read(&mut buf) {
                Ok(0) => {
                    if self.decoder.buffered() > 0 {
                        agent_log!("host hung up in the middle of a frame");
                    }
                    return Err(Disconnected);
                }
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    agent_log!("cannot read from the host: {e}");
                    return Err(Disconnected);
                }
            }
        };
        self.decoder.push(&buf[..n]);
        loop {
            match self.decoder.next_message::<HostMessage>() {
                Ok(None) => return Ok(None),
                Ok(Some(msg)) => {
                    if let Some(end) = self.handle(msg, server)? {
                        return Ok(Some(end));
                    }
                }
                Err(e) => {
                    self.send(&AgentMessage::Error {
                        message: format!("bad message: {e}"),
                    })?;
                    if e.is_fatal() {
                        // The stream is out of sync; nothing after this
                        // can be trusted.
                        return Err(Disconnected);
                    }
                }
            }
        }
    }

    fn error(&mut self, message: impl std::fmt::Display) -> Result<(), Disconnected> {
        self.send(&AgentMessage::Error {
            message: message.to_string(),
        })
    }

    fn handle(
        &mut self,
        msg: HostMessage,
        server: &mut Server,
    ) -> Result<Option<ConnectionEnd>, Disconnected> {
        if !self.greeted {
            return match msg {
                HostMessage::Hello { version } => {
                    self.send(&AgentMessage::Hello {
                        version: PROTOCOL_VERSION,
                    })?;
                    if version != PROTOCOL_VERSION {
                        self.error(ProtocolError::VersionMismatch {
                            host: version,
                            agent: PROTOCOL_VERSION,
                        })?;
                        return Err(Disconnected);
                    }
                    self.greeted = true;
                    Ok(None)
                }
                _ => {
                    self.error("expected Hello first")?;
                    Err(Disconnected)
                }
            };
        }
        match msg {
            HostMessage::Hello { .. } => self.error("already greeted")?,
            HostMessage::Refresh {
                entropy,
                realtime_ns,
                hostname,
            } => {
                let refresh = Refresh {
                    entropy: &entropy,
                    realtime_ns,
                    hostname: hostname.as_deref(),
                };
                let result = if self.container.is_some() || self.finished.is_some() {
                    Err("refresh is only accepted before any container".to_string())
                } else {
                    match &server.refresher {
                        Some(r) => r.apply(&refresh),
                        None => refresh.validate(),
                    }
                    .map_err(|e| format!("cannot refresh: {e}"))
                };
                match result {
                    Ok(()) => self.send(&AgentMessage::Refreshed)?,
                    Err(e) => self.error(e)?,
                }
            }
            HostMessage::CreateContainer { spec } => {
                if self.container.is_some() {
                    self.error("a container already exists in this VM")?;
                } else {
                    if let Some(old) = self.finished.take() {
                        old.destroy();
                    }
                    let id = server.container_id();
                    match Container::create(&id, &spec, &server.settings, &mut server.prepared) {
                        Ok(c) => {
                            self.container = Some(c);
                            self.send(&AgentMessage::Created)?;
                        }
                        Err(e) => self.error(format!("cannot create container: {e}"))?,
                    }
                }
            }
            HostMessage::Start => match &mut self.container {
                None => self.error("no container to start")?,
                Some(c) => match c.start(&mut server.stack) {
                    Ok((pid, steps)) => {
                        let times = server.boot_times.map(|(start, ready)| GuestTimes {
                            agent_start_ns: start,
                            agent_ready_ns: ready,
                            started_ns: crate::clock::boottime_ns(),
                        });
                        self.send(&AgentMessage::Started {
                            pid: pid.as_raw() as u32,
                            times,
                            steps,
                        })?
                    }
                    Err(e) => {
                        // A half-started container is of no further use.
                        if let Some(c) = self.container.take() {
                            c.destroy();
                        }
                        self.error(format!("cannot start container: {e}"))?
                    }
                },
            },
            HostMessage::Stdin(data) => {
                if let Some(c) = self.container.as_mut().filter(|c| c.is_started()) {
                    c.stdio.queue_stdin(&data);
                } else {
                    self.error("no running container for stdin")?;
                }
            }
            HostMessage::CloseStdin => {
                if let Some(c) = &mut self.container {
                    c.stdio.close_stdin();
                }
            }
            HostMessage::Signal { signal, .. } => match &self.container {
                None => self.error("no container to signal")?,
                Some(c) => {
                    if let Err(e) = c.signal(signal) {
                        self.error(e)?;
                    }
                }
            },
            HostMessage::ResizeTty { rows, cols } => {
                if let Some(Err(e)) = self.container.as_ref().map(|c| c.stdio.resize(rows, cols)) {
                    self.error(format!("cannot resize the terminal: {e}"))?;
                }
            }
            HostMessage::Wait => match &self.container {
                Some(c) if c.is_started() => self.wait_requested = true,
                Some(_) => self.error("container not started")?,
                None => self.error("no container to wait for")?,
            },
            HostMessage::Exec { .. } | HostMessage::ListProcesses | HostMessage::Freeze { .. } => {
                self.error("not supported by this agent yet")?
            }
            HostMessage::Shutdown => {
                // The host kills the VM once it has the reply, so the reply
                // waits for the one thing that must outlive the VM: the
                // volumes' data. Nothing else is flushed or torn down.
                let mut flushed = Ok(());
                for c in [&mut self.container, &mut self.finished]
                    .into_iter()
                    .flatten()
                {
                    c.stop();
                    flushed = flushed.and(c.flush_volumes());
                }
                if let Err(e) = flushed {
                    self.error(e)?;
                }
                self.send(&AgentMessage::ShuttingDown)?;
                return Ok(Some(ConnectionEnd::Shutdown));
            }
        }
        Ok(None)
    }
}
