//! The main connection: the one that refreshes the VM, creates, starts
//! and waits for the container, and shuts the VM down. It owns the
//! container; side connections only borrow it.

use bulkhead_protocol::{AgentMessage, GuestTimes, HostMessage};

use super::link::{Disconnected, Link};
use super::relay::{self, Ready, Watch};
use super::{answer_freeze, answer_processes, Server};
use crate::container::Container;
use crate::reaper::Reaper;
use crate::refresh::Refresh;

/// The host asked for Shutdown, which was acknowledged: the connection
/// and the VM end.
pub struct Shutdown;

pub struct Session {
    link: Link,
    container: Option<Container>,
    /// A container whose exit was reported: torn down lazily (before the
    /// next one, or when the connection ends), so the host does not wait
    /// for unmounts, and skipped entirely when the VM powers off.
    finished: Option<Container>,
    wait_requested: bool,
}

impl Session {
    pub fn new(link: Link) -> Session {
        Session {
            link,
            container: None,
            finished: None,
            wait_requested: false,
        }
    }

    /// A connection opened now is a side connection: one is while this
    /// connection holds a (created or started) container.
    pub fn holds_container(&self) -> bool {
        self.container.is_some()
    }

    /// The container a side connection opened now works on.
    pub fn current(&self) -> Option<&Container> {
        self.container.as_ref()
    }

    /// The container with `id`, while this connection still has it.
    pub fn find(&self, id: &str) -> Option<&Container> {
        [&self.container, &self.finished]
            .into_iter()
            .flatten()
            .find(|c| c.id() == id)
    }

    pub fn watch<'a>(&'a self, add: Watch<'a, '_>) {
        let stdio = self.container.as_ref().map(|c| &c.stdio);
        relay::watch_link(&self.link, stdio, add);
        if let Some(c) = self.container.as_ref().filter(|c| c.is_started()) {
            relay::watch_stdio(&c.stdio, &self.link, add);
        }
    }

    /// Picks up the init's status once it has been reaped.
    pub fn collect_exit(&mut self, reaper: &mut Reaper) {
        if let Some(c) = &mut self.container {
            if let Some(status) = c.pid().and_then(|pid| reaper.take(pid)) {
                c.set_exited(status);
            }
        }
    }

    /// Sends the exit status once the process exited, its output is fully
    /// forwarded and the host asked for it; the container is then gone.
    pub fn send_exit_if_done(&mut self) -> Result<(), Disconnected> {
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
        self.link.send(&AgentMessage::Exit { status, steps })
    }

    pub fn on_ready(
        &mut self,
        ready: Ready,
        server: &mut Server,
    ) -> Result<Option<Shutdown>, Disconnected> {
        if ready.replies {
            self.link.flush()?;
        }
        if let Some(c) = self.container.as_mut().filter(|c| c.is_started()) {
            relay::pump(&mut c.stdio, &mut self.link, &ready)?;
        }
        if ready.requests {
            for msg in self.link.receive()? {
                let end = match msg {
                    Ok(msg) => self.handle(msg, server)?,
                    Err(e) => {
                        self.link.error(format!("bad message: {e}"))?;
                        if e.is_fatal() {
                            // The stream is out of sync; nothing after this
                            // can be trusted.
                            return Err(Disconnected);
                        }
                        None
                    }
                };
                if end.is_some() {
                    return Ok(end);
                }
            }
        }
        Ok(None)
    }

    /// The connection ended without Shutdown: its containers go (and with
    /// them every process exec'd into them).
    pub fn close(mut self, reaper: &mut Reaper) {
        self.link.drain(super::CLOSE_DRAIN);
        self.destroy_all(reaper);
    }

    /// After Shutdown: makes sure the host got the acknowledgement, then
    /// tears down, unless the VM is about to end anyway.
    pub fn shut_down(mut self, reaper: &mut Reaper, powers_off: bool) {
        self.link.linger(super::SHUTDOWN_LINGER);
        if !powers_off {
            self.destroy_all(reaper);
        }
    }

    fn destroy_all(&mut self, reaper: &mut Reaper) {
        for c in [self.container.take(), self.finished.take()]
            .into_iter()
            .flatten()
        {
            c.destroy(reaper);
        }
    }

    fn handle(
        &mut self,
        msg: HostMessage,
        server: &mut Server,
    ) -> Result<Option<Shutdown>, Disconnected> {
        if !self.link.greeted() {
            self.link.greet(msg)?;
            return Ok(None);
        }
        match msg {
            HostMessage::Hello { .. } => self.link.error("already greeted")?,
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
                    Ok(()) => self.link.send(&AgentMessage::Refreshed)?,
                    Err(e) => self.link.error(e)?,
                }
            }
            HostMessage::CreateContainer { spec } => {
                if self.container.is_some() {
                    self.link.error("a container already exists in this VM")?;
                } else {
                    if let Some(old) = self.finished.take() {
                        old.destroy(&mut server.reaper);
                    }
                    let id = server.container_id();
                    match Container::create(&id, &spec, &server.settings, &mut server.prepared) {
                        Ok(c) => {
                            self.container = Some(c);
                            self.link.send(&AgentMessage::Created)?;
                        }
                        Err(e) => self.link.error(format!("cannot create container: {e}"))?,
                    }
                }
            }
            HostMessage::Start => self.start(server)?,
            HostMessage::Stdin(data) => {
                if let Some(c) = self.container.as_mut().filter(|c| c.is_started()) {
                    c.stdio.queue_stdin(&data);
                } else {
                    self.link.error("no running container for stdin")?;
                }
            }
            HostMessage::CloseStdin => {
                if let Some(c) = &mut self.container {
                    c.stdio.close_stdin();
                }
            }
            HostMessage::Signal { signal, all } => match &self.container {
                None => self.link.error("no container to signal")?,
                Some(c) => {
                    let sent = if all {
                        c.signal_all(signal)
                    } else {
                        c.signal(signal)
                    };
                    if let Err(e) = sent {
                        self.link.error(e)?;
                    }
                }
            },
            HostMessage::ResizeTty { rows, cols } => {
                if let Some(c) = &self.container {
                    relay::resize(&c.stdio, &mut self.link, rows, cols)?;
                }
            }
            HostMessage::Wait => match &self.container {
                Some(c) if c.is_started() => self.wait_requested = true,
                Some(_) => self.link.error("container not started")?,
                None => self.link.error("no container to wait for")?,
            },
            HostMessage::ListProcesses => {
                let reply = answer_processes(self.container.as_ref());
                self.link.send(&reply)?;
            }
            HostMessage::Freeze { frozen } => {
                let reply = answer_freeze(self.container.as_ref(), frozen);
                self.link.send(&reply)?;
            }
            HostMessage::Exec { .. } => self
                .link
                .error("Exec is only accepted as the first request of a side connection")?,
            HostMessage::Shutdown => {
                // The host kills the VM once it has the reply, so the reply
                // waits for the one thing that must outlive the VM: the
                // volumes' data. Nothing else is flushed or torn down.
                let mut flushed = Ok(());
                for c in [&mut self.container, &mut self.finished]
                    .into_iter()
                    .flatten()
                {
                    c.stop(&mut server.reaper);
                    flushed = flushed.and(c.flush_volumes());
                }
                if let Err(e) = flushed {
                    self.link.error(e)?;
                }
                self.link.send(&AgentMessage::ShuttingDown)?;
                return Ok(Some(Shutdown));
            }
        }
        Ok(None)
    }

    fn start(&mut self, server: &mut Server) -> Result<(), Disconnected> {
        let Some(c) = &mut self.container else {
            return self.link.error("no container to start");
        };
        match c.start(&mut server.stack, &mut server.reaper) {
            Ok((pid, steps)) => {
                let times = server.boot_times.map(|(start, ready)| GuestTimes {
                    agent_start_ns: start,
                    agent_ready_ns: ready,
                    started_ns: crate::clock::boottime_ns(),
                });
                self.link.send(&AgentMessage::Started {
                    pid: pid.as_raw() as u32,
                    times,
                    steps,
                })
            }
            Err(e) => {
                // A half-started container is of no further use.
                if let Some(c) = self.container.take() {
                    c.destroy(&mut server.reaper);
                }
                self.link.error(format!("cannot start container: {e}"))
            }
        }
    }
}
