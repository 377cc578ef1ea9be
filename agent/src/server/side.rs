//! A side connection: one opened while the main connection holds a
//! container. Its first request after Hello decides what it is: `Exec`
//! runs a process in the container and serves that process's stdio and
//! exit as the main connection does the init's, after which the agent
//! ends its sending side (the host reads to the end) and ignores the rest
//! until the host hangs up; `ListProcesses` and `Freeze` make it a control
//! connection that answers those until the host hangs up. Anything else
//! first is refused, and the connection closed.

use std::os::fd::AsFd;
use std::time::Duration;

use bulkhead_protocol::{AgentMessage, HostMessage};
use nix::poll::PollFlags;

use super::link::{Disconnected, Link};
use super::relay::{self, Channel, Ready, Watch};
use super::session::Session;
use super::{answer_freeze, answer_processes, Server};
use crate::container::exec::Exec;
use crate::container::Container;
use crate::reaper::Reaper;

pub struct Side {
    link: Link,
    /// The id of the container the connection works on, fixed by its
    /// first request: a later container in the VM is none of its
    /// business.
    container: Option<String>,
    role: Role,
    /// The Exit was sent: once it is written, our sending side ends and
    /// whatever the host still sends (late stdin) is dropped, so that a
    /// host racing the exit gets no broken pipe.
    done: Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    No,
    /// The Exit is queued.
    Exited,
    /// The Exit is written and our side shut down.
    HalfClosed,
}

enum Role {
    /// No request yet, or only Execs that failed.
    Undecided,
    /// ListProcesses and Freeze only.
    Control,
    Exec {
        process: Exec,
        wait_requested: bool,
    },
}

/// A request's name, for refusals.
fn name(msg: &HostMessage) -> &'static str {
    match msg {
        HostMessage::Hello { .. } => "Hello",
        HostMessage::Refresh { .. } => "Refresh",
        HostMessage::CreateContainer { .. } => "CreateContainer",
        HostMessage::Start => "Start",
        HostMessage::Stdin(_) => "Stdin",
        HostMessage::CloseStdin => "CloseStdin",
        HostMessage::Signal { .. } => "Signal",
        HostMessage::ResizeTty { .. } => "ResizeTty",
        HostMessage::Wait => "Wait",
        HostMessage::Exec { .. } => "Exec",
        HostMessage::ListProcesses => "ListProcesses",
        HostMessage::Freeze { .. } => "Freeze",
        HostMessage::Shutdown => "Shutdown",
    }
}

impl Side {
    pub fn new(link: Link) -> Side {
        Side {
            link,
            container: None,
            role: Role::Undecided,
            done: Done::No,
        }
    }

    fn exec(&self) -> Option<&Exec> {
        match &self.role {
            Role::Exec { process, .. } => Some(process),
            _ => None,
        }
    }

    pub fn watch<'a>(&'a self, add: Watch<'a, '_>) {
        match self.done {
            Done::No => {}
            // The Exit is still to be written.
            Done::Exited => {
                add(self.link.as_fd(), PollFlags::POLLOUT, Channel::Replies);
                return;
            }
            // Only the host's hang-up is left to see.
            Done::HalfClosed => {
                add(self.link.as_fd(), PollFlags::POLLIN, Channel::Requests);
                return;
            }
        }
        let exec = self.exec();
        relay::watch_link(&self.link, exec.map(|e| &e.stdio), add);
        if let Some(e) = exec {
            relay::watch_stdio(&e.stdio, &self.link, add);
        }
    }

    /// Picks up the process's status once it has been reaped.
    pub fn collect_exit(&mut self, reaper: &mut Reaper) {
        if let Role::Exec { process, .. } = &mut self.role {
            if let Some(status) = reaper.take(process.pid()) {
                process.set_exited(status);
            }
        }
    }

    /// Sends the exit status once the process exited, its output is
    /// forwarded and the host asked for it.
    pub fn send_exit_if_done(&mut self) -> Result<(), Disconnected> {
        let Role::Exec {
            process,
            wait_requested: true,
        } = &self.role
        else {
            return Ok(());
        };
        if self.done != Done::No || !process.stdio.outputs_done() {
            return Ok(());
        }
        let Some(status) = process.exit_status() else {
            return Ok(());
        };
        self.done = Done::Exited;
        self.link.send(&AgentMessage::Exit {
            status,
            steps: Vec::new(),
        })?;
        self.half_close_when_written()
    }

    fn half_close_when_written(&mut self) -> Result<(), Disconnected> {
        if self.done == Done::Exited && !self.link.wants_write() {
            self.link.shutdown_write()?;
            self.done = Done::HalfClosed;
        }
        Ok(())
    }

    pub fn on_ready(
        &mut self,
        ready: Ready,
        main: Option<&Session>,
        server: &mut Server,
    ) -> Result<(), Disconnected> {
        if ready.replies {
            self.link.flush()?;
            self.half_close_when_written()?;
        }
        if self.done == Done::HalfClosed {
            if ready.requests {
                // Dropped unread; the end of stream ends the connection.
                self.link.receive()?;
            }
            return Ok(());
        }
        if let Role::Exec { process, .. } = &mut self.role {
            relay::pump(&mut process.stdio, &mut self.link, &ready)?;
        }
        if ready.requests && self.done == Done::No {
            for msg in self.link.receive()? {
                match msg {
                    Ok(msg) => self.handle(msg, main, server)?,
                    Err(e) => {
                        self.link.error(format!("bad message: {e}"))?;
                        if e.is_fatal() {
                            return Err(Disconnected);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection ends: its process, if still running, is killed (its
    /// status is of no use to anybody now).
    pub fn close(mut self, reaper: &mut Reaper, drain: Duration) {
        self.link.drain(drain);
        self.link.discard_input();
        if let Role::Exec { process, .. } = self.role {
            process.abandon(reaper);
        }
    }

    /// The container the connection was opened on, while it exists.
    fn bound<'m>(&self, main: Option<&'m Session>) -> Option<&'m Container> {
        let id = self.container.as_deref()?;
        main?.find(id)
    }

    /// Fixes the connection's container at its first request: the main
    /// connection's current one.
    fn bind(&mut self, main: Option<&Session>) {
        if self.container.is_none() {
            self.container = main.and_then(Session::current).map(|c| c.id().to_string());
        }
    }

    fn handle(
        &mut self,
        msg: HostMessage,
        main: Option<&Session>,
        server: &mut Server,
    ) -> Result<(), Disconnected> {
        if !self.link.greeted() {
            return self.link.greet(msg);
        }
        match msg {
            HostMessage::Hello { .. } => self.link.error("already greeted"),
            HostMessage::ListProcesses => {
                self.bind(main);
                if let Role::Undecided = self.role {
                    self.role = Role::Control;
                }
                let reply = answer_processes(self.bound(main));
                self.link.send(&reply)
            }
            HostMessage::Freeze { frozen } => {
                self.bind(main);
                if let Role::Undecided = self.role {
                    self.role = Role::Control;
                }
                let reply = answer_freeze(self.bound(main), frozen);
                self.link.send(&reply)
            }
            HostMessage::Exec { process } if matches!(self.role, Role::Undecided) => {
                let Some(container) = main.and_then(Session::current) else {
                    return self.link.error("container is not running");
                };
                match Exec::spawn(container, &process, &mut server.stack, &mut server.reaper) {
                    Ok(exec) => {
                        let pid = exec.pid().as_raw() as u32;
                        self.container = Some(container.id().to_string());
                        self.role = Role::Exec {
                            process: exec,
                            wait_requested: false,
                        };
                        self.link.send(&AgentMessage::Started {
                            pid,
                            times: None,
                            steps: Vec::new(),
                        })
                    }
                    Err(e) => self.link.error(e),
                }
            }
            msg => match &mut self.role {
                Role::Exec { .. } => self.handle_process(msg, main),
                Role::Undecided => {
                    self.link.error(format!(
                        "{} is not accepted as the first request of a side connection",
                        name(&msg)
                    ))?;
                    Err(Disconnected)
                }
                Role::Control => self.link.error(format!(
                    "{} is not accepted on this side connection",
                    name(&msg)
                )),
            },
        }
    }

    /// A request about the exec'd process.
    fn handle_process(
        &mut self,
        msg: HostMessage,
        main: Option<&Session>,
    ) -> Result<(), Disconnected> {
        let container = self.bound(main);
        let Role::Exec {
            process,
            wait_requested,
        } = &mut self.role
        else {
            return Ok(());
        };
        match msg {
            HostMessage::Stdin(data) => process.stdio.queue_stdin(&data),
            HostMessage::CloseStdin => process.stdio.close_stdin(),
            HostMessage::Signal { signal, all } => {
                // While the process runs, so does the container it is in.
                let sent = match container {
                    Some(c) if all && process.is_running() => c.signal_all(signal),
                    _ => process.signal(signal),
                };
                if let Err(e) = sent {
                    return self.link.error(e);
                }
            }
            HostMessage::ResizeTty { rows, cols } => {
                return relay::resize(&process.stdio, &mut self.link, rows, cols)
            }
            HostMessage::Wait => *wait_requested = true,
            other => {
                return self.link.error(format!(
                    "{} is not accepted on a side connection",
                    name(&other)
                ))
            }
        }
        Ok(())
    }
}
