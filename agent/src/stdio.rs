//! The agent's end of the container's stdio: pipes, or a pty master.
//!
//! Output is read in chunks as poll reports it readable and forwarded as
//! protocol frames. Stdin is written without blocking: data the process
//! has not consumed yet waits in a buffer, so a process that never reads
//! stdin cannot stall the agent's event loop.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

/// Largest chunk read from an output stream at once (one frame).
const READ_CHUNK: usize = bulkhead_protocol::MAX_DATA_CHUNK;

/// Above this much unwritten stdin the agent stops reading from the host,
/// pushing back on the sender instead of buffering without bound.
pub const STDIN_HIGH_WATER: usize = 1 << 20;

/// ASCII end-of-transmission: the default VEOF character of a terminal.
const EOT: u8 = 4;

/// The container's ends of the stdio pipes, installed as fds 0-2 before
/// exec. With a terminal there are none: the child opens the pty itself.
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Vec<u8>),
    /// The stream ended (every writer closed it, or the pty hung up).
    Eof,
    /// Spurious wake-up: nothing to read right now.
    Nothing,
}

#[derive(Debug)]
pub struct Stdio {
    stdin: Option<OwnedFd>,
    pending: Vec<u8>,
    close_requested: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: bool,
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

impl Stdio {
    /// Three pipes; returns the agent's ends and the container's.
    pub fn pipes() -> nix::Result<(Stdio, ChildStdio)> {
        let (stdin_r, stdin_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (stdout_r, stdout_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (stderr_r, stderr_w) = pipe2(OFlag::O_CLOEXEC)?;
        set_nonblocking(&stdin_w)?;
        Ok((
            Stdio {
                stdin: Some(stdin_w),
                pending: Vec::new(),
                close_requested: false,
                stdout: Some(stdout_r),
                stderr: Some(stderr_r),
                tty: false,
            },
            ChildStdio {
                stdin: stdin_r,
                stdout: stdout_w,
                stderr: stderr_w,
            },
        ))
    }

    /// A terminal whose pty the container has not opened yet (it does so
    /// when it starts): no descriptors, so nothing to poll.
    pub fn awaiting_pty() -> Stdio {
        Stdio {
            stdin: None,
            pending: Vec::new(),
            close_requested: false,
            stdout: None,
            stderr: None,
            tty: true,
        }
    }

    /// Takes the pty master received from the container. Stdin gets its
    /// own descriptor so closing stdin does not close the output side. A
    /// close of stdin requested before is honoured now.
    pub fn attach_pty(&mut self, master: OwnedFd) -> nix::Result<()> {
        // Shared file description: non-blocking for both reads and writes.
        set_nonblocking(&master)?;
        let input = master
            .try_clone()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        let close = std::mem::take(&mut self.close_requested);
        self.stdin = Some(input);
        self.stdout = Some(master);
        self.tty = true;
        if close {
            self.close_stdin();
        }
        Ok(())
    }

    pub fn stdout_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stdout.as_ref().map(|f| f.as_fd())
    }

    pub fn stderr_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stderr.as_ref().map(|f| f.as_fd())
    }

    /// The stdin descriptor, when there is buffered data to write.
    pub fn stdin_fd_to_flush(&self) -> Option<BorrowedFd<'_>> {
        self.stdin
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|f| f.as_fd())
    }

    pub fn stdin_backlog(&self) -> usize {
        self.pending.len()
    }

    pub fn outputs_done(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Reads one chunk from `stream`; closes it at end of stream.
    pub fn read(&mut self, stream: Stream) -> ReadOutcome {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(fd) = slot else {
            return ReadOutcome::Eof;
        };
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    return ReadOutcome::Data(buf);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return ReadOutcome::Nothing,
                // EIO is how a pty master reports that the last slave
                // descriptor closed.
                Err(_) => break,
            }
        }
        *slot = None;
        ReadOutcome::Eof
    }

    /// Queues bytes for stdin and writes as much as the pipe takes now.
    /// Data for a closed stdin is dropped: the process can no longer read.
    pub fn queue_stdin(&mut self, data: &[u8]) {
        if self.stdin.is_none() || self.close_requested {
            return;
        }
        self.pending.extend_from_slice(data);
        self.flush_stdin();
    }

    /// Writes buffered stdin until the pipe is full or the buffer empty.
    pub fn flush_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.pending.clear();
            return;
        };
        let mut written = 0;
        while written < self.pending.len() {
            match nix::unistd::write(fd, &self.pending[written..]) {
                Ok(n) => written += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // EPIPE: the process closed its stdin; nothing more will be
                // read, so drop what is left.
                Err(_) => {
                    self.stdin = None;
                    self.pending.clear();
                    return;
                }
            }
        }
        self.pending.drain(..written);
        if self.pending.is_empty() && self.close_requested {
            self.stdin = None;
        }
    }

    /// End of input: closes stdin once buffered data is written. A pty
    /// cannot be closed for input alone, so it gets the terminal's EOF
    /// character (^D) instead, which ends input for a program reading in
    /// canonical mode, as typing ^D would.
    pub fn close_stdin(&mut self) {
        if self.close_requested {
            return;
        }
        if self.tty && self.stdin.is_some() {
            self.pending.push(EOT);
            self.flush_stdin();
        }
        self.close_requested = true;
        if self.pending.is_empty() {
            self.stdin = None;
        }
    }

    /// Sets the terminal size; no-op without a terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> nix::Result<()> {
        match (&self.stdout, self.tty) {
            (Some(master), true) => set_window_size(master.as_fd(), rows, cols),
            _ => Ok(()),
        }
    }
}

pub fn set_window_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize from the pointer.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if ret < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};

    #[test]
    fn output_then_eof() {
        let (mut stdio, child) = Stdio::pipes().unwrap();
        File::from(child.stdout).write_all(b"hello").unwrap();
        assert_eq!(
            stdio.read(Stream::Stdout),
            ReadOutcome::Data(b"hello".to_vec())
        );
        assert_eq!(stdio.read(Stream::Stdout), ReadOutcome::Eof);
        assert!(!stdio.outputs_done());
        drop(child.stderr);
        assert_eq!(stdio.read(Stream::Stderr), ReadOutcome::Eof);
        assert!(stdio.outputs_done());
    }

    #[test]
    fn stdin_buffers_past_a_full_pipe_and_closes_after_flushing() {
        let (mut stdio, child) = Stdio::pipes().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        stdio.queue_stdin(&data);
        // A pipe holds 64 KiB by default; the rest must wait.
        assert!(stdio.stdin_backlog() > 0);
        assert!(stdio.stdin_fd_to_flush().is_some());
        stdio.close_stdin();

        let mut reader = File::from(child.stdin);
        let mut got = Vec::new();
        let mut buf = vec![0; 65536];
        while got.len() < data.len() {
            let n = reader.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            stdio.flush_stdin();
        }
        assert_eq!(got, data);
        // All written and close requested: the write end is gone.
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn stdin_to_a_closed_reader_is_dropped() {
        let (mut stdio, child) = Stdio::pipes().unwrap();
        drop(child.stdin);
        stdio.queue_stdin(b"nobody listens");
        assert_eq!(stdio.stdin_backlog(), 0);
        assert!(stdio.stdin_fd_to_flush().is_none());
    }
}
