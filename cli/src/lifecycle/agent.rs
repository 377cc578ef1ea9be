//! Talking to the guest agent: reaching it through the hybrid vsock socket,
//! building the container, then pumping stdio until its process exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_protocol::{
    AgentClient, AgentWriter, ContainerSpec, Event, ExitStatus, GuestTimes, ProcessSpec, StepTime,
    AGENT_VSOCK_PORT,
};

use super::vm::RunningVm;

/// How long the guest may take from KVM_RUN to a listening agent, and then
/// to each answer while the container is set up. Boots on PVM hosts take
/// tens of seconds; on real hosts, well under one. A guest past it is hung
/// (or hostile): the run fails and its VM is ended.
const AGENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Overrides [`AGENT_TIMEOUT`], in seconds.
pub const AGENT_TIMEOUT_ENV: &str = "BULKHEAD_AGENT_TIMEOUT";

fn agent_timeout() -> Duration {
    std::env::var(AGENT_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(AGENT_TIMEOUT, Duration::from_secs)
}

fn no_answer() -> anyhow::Error {
    anyhow::anyhow!(
        "the guest agent did not answer within {}s",
        agent_timeout().as_secs()
    )
}

/// A request/reply exchange with the agent, each reply bounded by the
/// agent timeout; a reply that never comes is a hung guest.
fn within_timeout<T>(
    socket: &UnixStream,
    exchange: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    socket.set_read_timeout(Some(agent_timeout()))?;
    let result = exchange().map_err(|e| {
        let timed_out = e.chain().any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            })
        });
        if timed_out {
            // `e` says what it was waiting for ("agent handshake failed").
            no_answer().context(e.to_string())
        } else {
            e
        }
    });
    // What follows (the process's output, its exit) may take any time.
    socket.set_read_timeout(None)?;
    result
}

/// Opens a stream to the agent's vsock port through the VMM's Unix socket,
/// retrying while the guest boots. Fails early if the VM ends.
pub fn connect_agent(uds: &Path, vm: &RunningVm) -> anyhow::Result<UnixStream> {
    connect_while(uds, || !vm.has_ended())
}

/// One more connection to a running VM's agent (a side connection: exec,
/// process list, freeze), from any process that can reach its socket.
pub fn connect_side(uds: &Path) -> anyhow::Result<UnixStream> {
    try_connect(uds)?.ok_or_else(|| anyhow::anyhow!("the container's guest agent does not answer"))
}

fn connect_while(uds: &Path, alive: impl Fn() -> bool) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + agent_timeout();
    let mut delay = Duration::from_millis(20);
    loop {
        if !alive() {
            bail!("the microVM stopped before its agent came up");
        }
        if Instant::now() > deadline {
            return Err(no_answer());
        }
        if let Some(stream) = try_connect(uds)? {
            return Ok(stream);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

/// One hybrid-vsock CONNECT; `None` while nobody listens in the guest.
fn try_connect(uds: &Path) -> anyhow::Result<Option<UnixStream>> {
    let (address, _dir_fd) = super::control::socket_path(uds)?;
    let mut stream = match UnixStream::connect(&address) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", uds.display())),
    };
    stream.write_all(format!("CONNECT {AGENT_VSOCK_PORT}\n").as_bytes())?;
    // The answer is one short line; read it byte by byte so nothing of
    // the agent's stream is swallowed by a buffer.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => bail!("garbled answer from the vsock device"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e).context("reading the vsock CONNECT answer"),
        }
    }
    if !line.starts_with(b"OK ") {
        return Ok(None);
    }
    Ok(Some(stream))
}

/// How long the agent may take to flush volumes before the VM is ended.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What makes a restored VM a distinct machine: every clone of a template
/// wakes up with the same memory, so the same RNG state and a stale clock.
pub struct Refresh {
    pub entropy: Vec<u8>,
    pub realtime_ns: u64,
    pub hostname: Option<String>,
}

impl Refresh {
    /// Fresh host entropy and the host's wall clock now.
    pub fn now(hostname: Option<String>) -> anyhow::Result<Refresh> {
        let mut entropy = vec![0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut entropy))
            .context("cannot read host entropy from /dev/urandom")?;
        let realtime_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Refresh {
            entropy,
            realtime_ns,
            hostname,
        })
    }
}

/// The running container, as far as the host is concerned.
pub struct Session {
    writer: Arc<Mutex<AgentWriter<UnixStream>>>,
    reader: bulkhead_protocol::AgentReader<UnixStream>,
    /// A handle on the same socket, to bound waits on it.
    socket: UnixStream,
    /// The agent's milestones and when its `Started` reply arrived.
    guest_times: Option<(GuestTimes, Instant)>,
    /// The guest-side steps of create, start and (once exited) the wait.
    steps: Vec<StepTime>,
}

/// The agent's connection once the container is built, before it runs.
pub struct Pending {
    client: AgentClient<UnixStream>,
    socket: UnixStream,
}

impl Pending {
    /// Handshake, refresh (restored VMs), create. Returns once the
    /// container is built in the guest.
    pub fn create(
        stream: UnixStream,
        spec: &ContainerSpec,
        refresh: Option<Refresh>,
    ) -> anyhow::Result<Pending> {
        let socket = stream.try_clone()?;
        let mut client = AgentClient::new(stream);
        within_timeout(&socket, || {
            client.handshake().context("agent handshake failed")?;
            if let Some(r) = refresh {
                client
                    .refresh(&r.entropy, r.realtime_ns, r.hostname.as_deref())
                    .context("cannot refresh the restored guest")?;
            }
            client.create(spec).context("cannot create the container")?;
            Ok(())
        })?;
        Ok(Pending { client, socket })
    }

    /// Runs the container's process; returns once it runs.
    pub fn start(mut self) -> anyhow::Result<Session> {
        let client = &mut self.client;
        let started = within_timeout(&self.socket, || {
            client.start_traced().context("cannot start the container")
        })?;
        let guest_times = started.times.map(|t| (t, Instant::now()));
        Session::waiting(self.client, self.socket, guest_times, started.steps)
    }
}

impl Session {
    /// Runs `process` in the container of the VM behind `uds`, on a side
    /// connection of its own.
    pub fn exec(uds: &Path, process: &ProcessSpec) -> anyhow::Result<Session> {
        let stream = connect_side(uds)?;
        let socket = stream.try_clone()?;
        let mut client = AgentClient::new(stream);
        within_timeout(&socket, || {
            client.handshake().context("agent handshake failed")?;
            client.exec(process).context("cannot exec in the container")
        })?;
        Session::waiting(client, socket, None, Vec::new())
    }

    /// Asks for the exit status (which comes after all output) and splits
    /// the connection.
    fn waiting(
        mut client: AgentClient<UnixStream>,
        socket: UnixStream,
        guest_times: Option<(GuestTimes, Instant)>,
        steps: Vec<StepTime>,
    ) -> anyhow::Result<Session> {
        client.wait()?;
        let (writer, reader) = client.split()?;
        Ok(Session {
            writer: Arc::new(Mutex::new(writer)),
            reader,
            socket,
            guest_times,
            steps,
        })
    }
}

/// A one-request side connection to the agent of the VM behind `uds`.
pub fn side_client(uds: &Path) -> anyhow::Result<AgentClient<UnixStream>> {
    let stream = connect_side(uds)?;
    // Its one request is answered at once by a healthy agent.
    stream.set_read_timeout(Some(agent_timeout()))?;
    let mut client = AgentClient::new(stream);
    client.handshake().context("agent handshake failed")?;
    Ok(client)
}

impl Session {
    /// The agent's boot milestones (guest clock) and the host instant its
    /// `Started` reply arrived, if the agent reports them.
    pub fn guest_times(&self) -> Option<(GuestTimes, Instant)> {
        self.guest_times
    }

    /// What the guest spent on each step of the container, in order.
    pub fn steps(&self) -> &[StepTime] {
        &self.steps
    }

    /// A handle other threads use to send stdin and signals.
    pub fn writer(&self) -> Arc<Mutex<AgentWriter<UnixStream>>> {
        self.writer.clone()
    }

    /// Another handle on the connection, to end it from another thread.
    pub fn socket(&self) -> std::io::Result<UnixStream> {
        self.socket.try_clone()
    }

    /// Copies output to our stdout/stderr until the process exits; calls
    /// `on_output` at the first byte of output.
    pub fn pump_output(&mut self, mut on_output: impl FnMut()) -> anyhow::Result<ExitStatus> {
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr();
        let mut seen_output = false;
        loop {
            let (event, steps) = self
                .reader
                .next_event_with_steps()
                .context("lost the connection to the guest agent")?;
            self.steps.extend(steps);
            match &event {
                Event::Stdout(data) | Event::Stderr(data) => {
                    if !seen_output && !data.is_empty() {
                        seen_output = true;
                        on_output();
                    }
                    write_event(&mut stdout, &mut stderr, &event, data);
                }
                Event::Exit(status) => return Ok(*status),
                Event::Error(message) => eprintln!("bulkhead: agent: {message}"),
                Event::ShuttingDown => {
                    bail!("the guest agent shut down before the container exited")
                }
            }
        }
    }

    /// Asks the agent to flush the container's volumes and waits until it
    /// says it has; after that nothing in the guest is worth keeping and
    /// the host ends the VM. Returns whether the agent confirmed.
    pub fn shutdown(mut self) -> bool {
        let sent = self
            .writer
            .lock()
            .map(|mut w| w.shutdown().is_ok())
            .unwrap_or(false);
        if !sent {
            return false;
        }
        let _ = self.socket.set_read_timeout(Some(SHUTDOWN_TIMEOUT));
        loop {
            match self.reader.next_event() {
                Ok(Event::ShuttingDown) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

fn write_event(stdout: &mut impl Write, stderr: &mut impl Write, event: &Event, data: &[u8]) {
    // A closed stdout (e.g. `| head`) must not abort the container.
    let _ = match event {
        Event::Stderr(_) => stderr.write_all(data).and_then(|_| stderr.flush()),
        _ => stdout.write_all(data).and_then(|_| stdout.flush()),
    };
}

/// Forwards our stdin to the container until EOF, then closes its stdin.
pub fn forward_stdin(writer: Arc<Mutex<AgentWriter<UnixStream>>>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let sent = writer
                        .lock()
                        .map(|mut w| w.send_stdin(&buf[..n]).is_ok())
                        .unwrap_or(false);
                    if !sent {
                        return;
                    }
                }
            }
        }
        if let Ok(mut w) = writer.lock() {
            let _ = w.close_stdin();
        }
    });
}

/// Reads the tail of the guest console log, for error reports.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
