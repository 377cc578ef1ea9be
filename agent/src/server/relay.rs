//! What every session does for the process it serves (the container's
//! init on the main connection, an exec'd process on a side one): have
//! its connection and stdio polled, forward its output, feed its stdin.

use std::os::fd::{AsFd, BorrowedFd};

use bulkhead_protocol::AgentMessage;
use nix::poll::PollFlags;

use super::link::{Disconnected, Link};
use crate::stdio::{ReadOutcome, Stdio, Stream, STDIN_HIGH_WATER};

/// One of a session's descriptors in the poll set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The connection has requests (or hung up).
    Requests,
    /// The connection takes queued replies.
    Replies,
    Stdout,
    Stderr,
    /// The process's stdin takes buffered input.
    Stdin,
}

/// Which of a session's descriptors poll found ready.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ready {
    pub requests: bool,
    pub replies: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub stdin: bool,
}

impl Ready {
    pub fn mark(&mut self, channel: Channel) {
        match channel {
            Channel::Requests => self.requests = true,
            Channel::Replies => self.replies = true,
            Channel::Stdout => self.stdout = true,
            Channel::Stderr => self.stderr = true,
            Channel::Stdin => self.stdin = true,
        }
    }
}

/// Adds a descriptor to the poll set.
pub type Watch<'a, 'w> = &'w mut dyn FnMut(BorrowedFd<'a>, PollFlags, Channel);

/// The connection: for requests unless the process's stdin is backed up
/// (which pushes back on the host), for replies while some wait.
pub fn watch_link<'a>(link: &'a Link, stdio: Option<&Stdio>, add: Watch<'a, '_>) {
    if stdio.map_or(0, Stdio::stdin_backlog) < STDIN_HIGH_WATER {
        add(link.as_fd(), PollFlags::POLLIN, Channel::Requests);
    }
    if link.wants_write() {
        add(link.as_fd(), PollFlags::POLLOUT, Channel::Replies);
    }
}

/// A started process's stdio: its output unless the connection is backed
/// up (which pushes back on the process), its stdin while input waits.
pub fn watch_stdio<'a>(stdio: &'a Stdio, link: &Link, add: Watch<'a, '_>) {
    if !link.is_backlogged() {
        if let Some(fd) = stdio.stdout_fd() {
            add(fd, PollFlags::POLLIN, Channel::Stdout);
        }
        if let Some(fd) = stdio.stderr_fd() {
            add(fd, PollFlags::POLLIN, Channel::Stderr);
        }
    }
    if let Some(fd) = stdio.stdin_fd_to_flush() {
        add(fd, PollFlags::POLLOUT, Channel::Stdin);
    }
}

/// Forwards one chunk of each ready output stream and writes buffered
/// stdin if it can take some.
pub fn pump(stdio: &mut Stdio, link: &mut Link, ready: &Ready) -> Result<(), Disconnected> {
    for (is_ready, stream) in [
        (ready.stdout, Stream::Stdout),
        (ready.stderr, Stream::Stderr),
    ] {
        if !is_ready {
            continue;
        }
        if let ReadOutcome::Data(data) = stdio.read(stream) {
            link.send(&match stream {
                Stream::Stdout => AgentMessage::Stdout(data),
                Stream::Stderr => AgentMessage::Stderr(data),
            })?;
        }
    }
    if ready.stdin {
        stdio.flush_stdin();
    }
    Ok(())
}

/// ResizeTty for the process's terminal.
pub fn resize(stdio: &Stdio, link: &mut Link, rows: u16, cols: u16) -> Result<(), Disconnected> {
    match stdio.resize(rows, cols) {
        Ok(()) => Ok(()),
        Err(e) => link.error(format!("cannot resize the terminal: {e}")),
    }
}
