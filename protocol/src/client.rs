//! The host side of the protocol.
//!
//! Setup is request/response on one [`AgentClient`]. Once the process runs,
//! [`AgentClient::split`] gives an [`AgentWriter`] (stdin, signals, resize,
//! wait, shutdown) and an [`AgentReader`] (output and exit events) that can
//! live on different threads. A `bulkhead run` goes:
//!
//! ```no_run
//! # use bulkhead_protocol::{AgentClient, ContainerSpec, Event};
//! # fn f(stream: std::os::unix::net::UnixStream, spec: ContainerSpec) -> Result<i32, Box<dyn std::error::Error>> {
//! let mut client = AgentClient::new(stream);
//! client.handshake()?;
//! client.create(&spec)?;
//! client.start()?;
//! // Ask for the exit status now: it arrives after all output, whenever
//! // the process ends, so the stdin thread never has to send it.
//! client.wait()?;
//! let (mut writer, mut reader) = client.split()?;
//! std::thread::spawn(move || {
//!     // copy the user's stdin: writer.send_stdin(..), then writer.close_stdin()
//! });
//! let status = loop {
//!     match reader.next_event()? {
//!         Event::Stdout(data) => { /* write to stdout */ }
//!         Event::Stderr(data) => { /* write to stderr */ }
//!         Event::Exit(status) => break status,
//!         Event::Error(message) => eprintln!("agent: {message}"),
//!         Event::ShuttingDown => unreachable!("not requested"),
//!     }
//! };
//! // Then shut the VM down: writer.shutdown(), read until
//! // Event::ShuttingDown (the volumes are flushed by then) and kill the VM;
//! // the agent also powers off by itself once the connection closes, or
//! // after one second.
//! # Ok(status.code()) }
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use crate::error::ProtocolError;
use crate::frame::{read_message, write_message, MAX_DATA_CHUNK};
use crate::message::{AgentMessage, ExitStatus, GuestTimes, HostMessage, StepTime};
use crate::spec::{ContainerSpec, ProcessSpec};
use crate::PROTOCOL_VERSION;

/// A stream that can be duplicated into an independent read half and
/// write half.
pub trait TryClone: Sized {
    fn try_clone(&self) -> io::Result<Self>;
}

impl TryClone for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
}

impl TryClone for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
}

impl TryClone for File {
    fn try_clone(&self) -> io::Result<Self> {
        File::try_clone(self)
    }
}

/// What the agent streams while the container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The answer to [`AgentWriter::wait`]: the process exited and all its
    /// output came before this event.
    Exit(ExitStatus),
    /// Something failed asynchronously (e.g. a signal could not be sent).
    Error(String),
    /// The answer to a shutdown request.
    ShuttingDown,
}

fn send<W: Write + ?Sized>(w: &mut W, msg: &HostMessage) -> Result<(), ProtocolError> {
    write_message(w, msg)
}

fn describe(msg: &AgentMessage) -> String {
    match msg {
        AgentMessage::Stdout(d) => format!("stdout data ({} bytes)", d.len()),
        AgentMessage::Stderr(d) => format!("stderr data ({} bytes)", d.len()),
        other => format!("{other:?}"),
    }
}

/// The agent's reply to `Start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The process's pid in the guest.
    pub pid: u32,
    /// The agent's boot milestones, if it reports them.
    pub times: Option<GuestTimes>,
    /// The guest-side steps of creating and starting the container.
    pub steps: Vec<StepTime>,
}

/// The next event and, for [`Event::Exit`], the guest-side steps from the
/// exec to the exit reply (empty for every other event).
fn next_event_with_steps<R: Read + ?Sized>(
    r: &mut R,
) -> Result<(Event, Vec<StepTime>), ProtocolError> {
    let event = match read_message(r)? {
        AgentMessage::Stdout(d) => Event::Stdout(d),
        AgentMessage::Stderr(d) => Event::Stderr(d),
        AgentMessage::Exit { status, steps } => return Ok((Event::Exit(status), steps)),
        AgentMessage::Error { message } => Event::Error(message),
        AgentMessage::ShuttingDown => Event::ShuttingDown,
        other => {
            return Err(ProtocolError::Unexpected {
                expected: "an output or exit event",
                got: describe(&other),
            })
        }
    };
    Ok((event, Vec::new()))
}

fn next_event<R: Read + ?Sized>(r: &mut R) -> Result<Event, ProtocolError> {
    next_event_with_steps(r).map(|(event, _)| event)
}

/// Sends `data` as stdin frames of at most [`MAX_DATA_CHUNK`] bytes.
fn send_stdin<W: Write + ?Sized>(w: &mut W, data: &[u8]) -> Result<(), ProtocolError> {
    for chunk in data.chunks(MAX_DATA_CHUNK) {
        send(w, &HostMessage::Stdin(chunk.to_vec()))?;
    }
    Ok(())
}

/// A connection to the agent, used for setup before the process runs.
#[derive(Debug)]
pub struct AgentClient<S> {
    stream: S,
}

impl<S: Read + Write> AgentClient<S> {
    pub fn new(stream: S) -> Self {
        AgentClient { stream }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends a request and reads its single reply; `Error` replies become
    /// [`ProtocolError::Agent`].
    fn call(&mut self, msg: &HostMessage) -> Result<AgentMessage, ProtocolError> {
        send(&mut self.stream, msg)?;
        match read_message(&mut self.stream)? {
            AgentMessage::Error { message } => Err(ProtocolError::Agent(message)),
            reply => Ok(reply),
        }
    }

    /// Exchanges versions; must be the first call. Returns the agent's
    /// version (always ours on success).
    pub fn handshake(&mut self) -> Result<u32, ProtocolError> {
        match self.call(&HostMessage::Hello {
            version: PROTOCOL_VERSION,
        })? {
            AgentMessage::Hello { version } if version == PROTOCOL_VERSION => Ok(version),
            AgentMessage::Hello { version } => Err(ProtocolError::VersionMismatch {
                host: PROTOCOL_VERSION,
                agent: version,
            }),
            other => Err(ProtocolError::Unexpected {
                expected: "Hello",
                got: describe(&other),
            }),
        }
    }

    /// Makes a VM restored from a template distinct from its siblings:
    /// mixes `entropy` into the guest's RNG and reseeds it, sets the guest's
    /// wall clock to `realtime_ns` (ns since the Unix epoch) and, if given,
    /// its hostname. Call it after [`handshake`](Self::handshake), before
    /// [`create`](Self::create).
    pub fn refresh(
        &mut self,
        entropy: &[u8],
        realtime_ns: u64,
        hostname: Option<&str>,
    ) -> Result<(), ProtocolError> {
        match self.call(&HostMessage::Refresh {
            entropy: entropy.to_vec(),
            realtime_ns,
            hostname: hostname.map(str::to_string),
        })? {
            AgentMessage::Refreshed => Ok(()),
            other => Err(ProtocolError::Unexpected {
                expected: "Refreshed",
                got: describe(&other),
            }),
        }
    }

    /// Builds the container; on error nothing is left behind in the guest.
    pub fn create(&mut self, spec: &ContainerSpec) -> Result<(), ProtocolError> {
        match self.call(&HostMessage::CreateContainer {
            spec: Box::new(spec.clone()),
        })? {
            AgentMessage::Created => Ok(()),
            other => Err(ProtocolError::Unexpected {
                expected: "Created",
                got: describe(&other),
            }),
        }
    }

    /// Runs the created container's process; returns its pid in the guest.
    pub fn start(&mut self) -> Result<u32, ProtocolError> {
        self.start_timed().map(|(pid, _)| pid)
    }

    /// Like [`start`](Self::start), also returning the agent's milestones
    /// when the agent reports them.
    pub fn start_timed(&mut self) -> Result<(u32, Option<GuestTimes>), ProtocolError> {
        self.start_traced().map(|s| (s.pid, s.times))
    }

    /// Like [`start`](Self::start), returning the whole reply: the agent's
    /// milestones and the guest-side steps of create and start.
    pub fn start_traced(&mut self) -> Result<Started, ProtocolError> {
        match self.call(&HostMessage::Start)? {
            AgentMessage::Started { pid, times, steps } => Ok(Started { pid, times, steps }),
            other => Err(ProtocolError::Unexpected {
                expected: "Started",
                got: describe(&other),
            }),
        }
    }

    /// On a side connection: runs `process` in the started container;
    /// returns its pid in the guest. Its stdio and exit then work as the
    /// container process's do.
    pub fn exec(&mut self, process: &ProcessSpec) -> Result<u32, ProtocolError> {
        match self.call(&HostMessage::Exec {
            process: Box::new(process.clone()),
        })? {
            AgentMessage::Started { pid, .. } => Ok(pid),
            other => Err(ProtocolError::Unexpected {
                expected: "Started",
                got: describe(&other),
            }),
        }
    }

    /// The guest pids of every process in the container.
    pub fn list_processes(&mut self) -> Result<Vec<u32>, ProtocolError> {
        match self.call(&HostMessage::ListProcesses)? {
            AgentMessage::Processes { pids } => Ok(pids),
            other => Err(ProtocolError::Unexpected {
                expected: "Processes",
                got: describe(&other),
            }),
        }
    }

    /// Freezes or thaws every process of the container.
    pub fn freeze(&mut self, frozen: bool) -> Result<(), ProtocolError> {
        match self.call(&HostMessage::Freeze { frozen })? {
            AgentMessage::Frozen { frozen: now } if now == frozen => Ok(()),
            other => Err(ProtocolError::Unexpected {
                expected: "Frozen",
                got: describe(&other),
            }),
        }
    }

    pub fn send_stdin(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        send_stdin(&mut self.stream, data)
    }

    pub fn close_stdin(&mut self) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::CloseStdin)
    }

    pub fn signal(&mut self, signal: i32) -> Result<(), ProtocolError> {
        send(
            &mut self.stream,
            &HostMessage::Signal { signal, all: false },
        )
    }

    /// Sends `signal` to every process of the container.
    pub fn signal_all(&mut self, signal: i32) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::Signal { signal, all: true })
    }

    pub fn resize_tty(&mut self, rows: u16, cols: u16) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::ResizeTty { rows, cols })
    }

    /// Requests the exit status; it arrives as [`Event::Exit`].
    pub fn wait(&mut self) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::Wait)
    }

    pub fn next_event(&mut self) -> Result<Event, ProtocolError> {
        next_event(&mut self.stream)
    }

    /// Like [`next_event`](Self::next_event), with the guest-side steps
    /// that come with [`Event::Exit`].
    pub fn next_event_with_steps(&mut self) -> Result<(Event, Vec<StepTime>), ProtocolError> {
        next_event_with_steps(&mut self.stream)
    }

    /// Asks the agent to power the VM off, skipping any output still in
    /// flight, and waits for its acknowledgement: once it returns, the
    /// container's volumes are flushed and the VM can be killed.
    pub fn shutdown(&mut self) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::Shutdown)?;
        loop {
            match self.next_event()? {
                Event::ShuttingDown => return Ok(()),
                Event::Error(message) => return Err(ProtocolError::Agent(message)),
                _ => {}
            }
        }
    }
}

impl<S: Read + Write + TryClone> AgentClient<S> {
    /// Splits the connection so one thread can feed stdin while another
    /// reads output.
    pub fn split(self) -> io::Result<(AgentWriter<S>, AgentReader<S>)> {
        let reader = self.stream.try_clone()?;
        Ok((
            AgentWriter {
                stream: self.stream,
            },
            AgentReader { stream: reader },
        ))
    }
}

/// The sending half of a split connection.
#[derive(Debug)]
pub struct AgentWriter<W> {
    stream: W,
}

impl<W: Write> AgentWriter<W> {
    pub fn send_stdin(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        send_stdin(&mut self.stream, data)
    }

    pub fn close_stdin(&mut self) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::CloseStdin)
    }

    pub fn signal(&mut self, signal: i32) -> Result<(), ProtocolError> {
        send(
            &mut self.stream,
            &HostMessage::Signal { signal, all: false },
        )
    }

    /// Sends `signal` to every process of the container.
    pub fn signal_all(&mut self, signal: i32) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::Signal { signal, all: true })
    }

    pub fn resize_tty(&mut self, rows: u16, cols: u16) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::ResizeTty { rows, cols })
    }

    /// Requests the exit status; it arrives on the reader as [`Event::Exit`].
    pub fn wait(&mut self) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::Wait)
    }

    /// Requests shutdown; the reader sees [`Event::ShuttingDown`].
    pub fn shutdown(&mut self) -> Result<(), ProtocolError> {
        send(&mut self.stream, &HostMessage::Shutdown)
    }
}

/// The receiving half of a split connection.
#[derive(Debug)]
pub struct AgentReader<R> {
    stream: R,
}

impl<R: Read> AgentReader<R> {
    pub fn next_event(&mut self) -> Result<Event, ProtocolError> {
        next_event(&mut self.stream)
    }

    /// Like [`next_event`](Self::next_event), with the guest-side steps
    /// that come with [`Event::Exit`].
    pub fn next_event_with_steps(&mut self) -> Result<(Event, Vec<StepTime>), ProtocolError> {
        next_event_with_steps(&mut self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_message;
    use crate::message::Termination;
    use crate::spec::ProcessSpec;
    use std::thread;

    /// Runs `agent` on the far end of a socket pair.
    fn with_fake_agent(
        agent: impl FnOnce(&mut UnixStream) + Send + 'static,
    ) -> (AgentClient<UnixStream>, thread::JoinHandle<()>) {
        let (host, mut far) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || agent(&mut far));
        (AgentClient::new(host), t)
    }

    fn expect(far: &mut UnixStream) -> HostMessage {
        read_message(far).unwrap()
    }

    fn reply(far: &mut UnixStream, m: AgentMessage) {
        write_message(far, &m).unwrap();
    }

    #[test]
    fn handshake_ok() {
        let (mut c, t) = with_fake_agent(|far| {
            assert_eq!(
                expect(far),
                HostMessage::Hello {
                    version: PROTOCOL_VERSION
                }
            );
            reply(
                far,
                AgentMessage::Hello {
                    version: PROTOCOL_VERSION,
                },
            );
        });
        assert_eq!(c.handshake().unwrap(), PROTOCOL_VERSION);
        t.join().unwrap();
    }

    #[test]
    fn handshake_version_mismatch() {
        let (mut c, t) = with_fake_agent(|far| {
            expect(far);
            reply(far, AgentMessage::Hello { version: 999 });
        });
        match c.handshake() {
            Err(ProtocolError::VersionMismatch { host, agent }) => {
                assert_eq!((host, agent), (PROTOCOL_VERSION, 999));
            }
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn start_reports_the_agent_times_when_sent() {
        let times = GuestTimes {
            agent_start_ns: 5,
            agent_ready_ns: 6,
            started_ns: 7,
        };
        let (mut c, t) = with_fake_agent(move |far| {
            assert_eq!(expect(far), HostMessage::Start);
            reply(
                far,
                AgentMessage::Started {
                    pid: 3,
                    times: Some(times),
                    steps: Vec::new(),
                },
            );
            assert_eq!(expect(far), HostMessage::Start);
            reply(
                far,
                AgentMessage::Started {
                    pid: 4,
                    times: None,
                    steps: Vec::new(),
                },
            );
            assert_eq!(expect(far), HostMessage::Start);
            reply(
                far,
                AgentMessage::Started {
                    pid: 5,
                    times: None,
                    steps: vec![clone_step()],
                },
            );
        });
        assert_eq!(c.start_timed().unwrap(), (3, Some(times)));
        assert_eq!(c.start().unwrap(), 4);
        assert_eq!(
            c.start_traced().unwrap(),
            Started {
                pid: 5,
                times: None,
                steps: vec![clone_step()]
            }
        );
        t.join().unwrap();
    }

    fn clone_step() -> StepTime {
        StepTime {
            name: "clone".into(),
            ns: 12,
            faults: 1,
        }
    }

    #[test]
    fn refresh_sends_its_fields_and_takes_refreshed() {
        let (mut c, t) = with_fake_agent(|far| {
            assert_eq!(
                expect(far),
                HostMessage::Refresh {
                    entropy: vec![9; 64],
                    realtime_ns: 42,
                    hostname: Some("clone-1".into()),
                }
            );
            reply(far, AgentMessage::Refreshed);
            assert_eq!(
                expect(far),
                HostMessage::Refresh {
                    entropy: vec![1],
                    realtime_ns: 43,
                    hostname: None,
                }
            );
            reply(
                far,
                AgentMessage::Error {
                    message: "cannot set the clock".into(),
                },
            );
        });
        c.refresh(&[9; 64], 42, Some("clone-1")).unwrap();
        match c.refresh(&[1], 43, None) {
            Err(ProtocolError::Agent(m)) => assert!(m.contains("clock")),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn handshake_against_closed_agent() {
        // The agent reads Hello and hangs up without a reply.
        let (mut c, t) = with_fake_agent(|far| {
            expect(far);
        });
        assert!(matches!(c.handshake(), Err(ProtocolError::Closed)));
        t.join().unwrap();
    }

    #[test]
    fn agent_errors_surface() {
        let (mut c, t) = with_fake_agent(|far| {
            expect(far);
            reply(
                far,
                AgentMessage::Error {
                    message: "no such device /dev/vda".into(),
                },
            );
        });
        let spec = ContainerSpec::new(ProcessSpec::new(vec!["true".into()]));
        match c.create(&spec) {
            Err(ProtocolError::Agent(m)) => assert!(m.contains("/dev/vda")),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn split_halves_work_from_two_threads() {
        let big = vec![b'x'; MAX_DATA_CHUNK * 2 + 5];
        let expected = big.clone();
        let (c, t) = with_fake_agent(move |far| {
            let mut got = Vec::new();
            loop {
                match expect(far) {
                    HostMessage::Stdin(d) => {
                        assert!(d.len() <= MAX_DATA_CHUNK);
                        reply(far, AgentMessage::Stdout(d.clone()));
                        got.extend(d);
                    }
                    HostMessage::CloseStdin => {}
                    HostMessage::Wait => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, expected);
            reply(
                far,
                AgentMessage::Exit {
                    status: ExitStatus {
                        termination: Termination::Exited { code: 0 },
                        oom_killed: false,
                    },
                    steps: vec![clone_step()],
                },
            );
        });
        let (mut w, mut r) = c.split().unwrap();
        let writer = thread::spawn(move || {
            w.send_stdin(&big).unwrap();
            w.close_stdin().unwrap();
            w.wait().unwrap();
        });
        let mut out = Vec::new();
        let status = loop {
            match r.next_event_with_steps().unwrap() {
                (Event::Stdout(d), steps) => {
                    assert!(steps.is_empty());
                    out.extend(d)
                }
                (Event::Exit(s), steps) => {
                    assert_eq!(steps, [clone_step()]);
                    break s;
                }
                other => panic!("{other:?}"),
            }
        };
        writer.join().unwrap();
        t.join().unwrap();
        assert_eq!(out.len(), MAX_DATA_CHUNK * 2 + 5);
        assert_eq!(status.code(), 0);
    }

    #[test]
    fn unexpected_reply_is_an_error() {
        let (mut c, t) = with_fake_agent(|far| {
            expect(far);
            reply(far, AgentMessage::Created);
        });
        assert!(matches!(
            c.start(),
            Err(ProtocolError::Unexpected {
                expected: "Started",
                ..
            })
        ));
        t.join().unwrap();
    }
}
