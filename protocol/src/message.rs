//! The messages of both directions and their mapping onto frames.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::frame::{encode_frame, kind};
use crate::spec::{ContainerSpec, ProcessSpec};

/// A message type that can be put in a frame.
pub trait Message: Sized {
    /// Appends this message as one complete frame.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError>;
    /// Decodes a frame body (kind byte already split off).
    fn decode(kind: u8, payload: &[u8]) -> Result<Self, ProtocolError>;
}

fn encode_json<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_frame(out, kind::JSON, |buf| {
        serde_json::to_writer(buf, msg).map_err(ProtocolError::Encode)
    })
}

fn encode_data(frame_kind: u8, data: &[u8], out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_frame(out, frame_kind, |buf| {
        buf.extend_from_slice(data);
        Ok(())
    })
}

fn decode_json<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(ProtocolError::Malformed)
}

/// The error for a frame kind the receiving side does not accept.
fn rejected_kind(frame_kind: u8) -> ProtocolError {
    match frame_kind {
        kind::JSON | kind::STDIN | kind::STDOUT | kind::STDERR => {
            ProtocolError::WrongDirection(frame_kind)
        }
        other => ProtocolError::UnknownFrameKind(other),
    }
}

/// Host -> agent.
///
/// Data variants are `#[serde(skip)]`: they always travel as raw data
/// frames, never as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    /// First message of every connection. Its JSON shape must never change.
    Hello { version: u32 },
    /// Sent to a VM restored from a template, before any container: makes
    /// this clone distinct from its siblings, which all resumed with the
    /// same memory. The agent mixes `entropy` into the kernel RNG and
    /// reseeds it, sets the wall clock to `realtime_ns` (ns since the Unix
    /// epoch, by the host's clock) and, if given, the VM's hostname.
    /// Answered with `Refreshed`.
    Refresh {
        entropy: Vec<u8>,
        realtime_ns: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
    },
    /// Build the container (mounts, namespaces, cgroup) but do not run it.
    CreateContainer { spec: Box<ContainerSpec> },
    /// Run the created container's process.
    Start,
    /// Bytes for the process's stdin.
    #[serde(skip)]
    Stdin(Vec<u8>),
    /// End of the process's stdin.
    CloseStdin,
    /// Send a signal to the container's process; with `all`, to every
    /// process in the container (`runc kill --all`). On a side connection
    /// (see `Exec`), it goes to that connection's process instead.
    Signal {
        signal: i32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    /// Set the terminal size (only meaningful with `terminal: true`).
    ResizeTty { rows: u16, cols: u16 },
    /// Ask for the exit status; answered with `Exit` once the process has
    /// exited and all of its output has been sent.
    Wait,
    /// The first request of a *side connection*: one opened while another
    /// connection holds a started container. Runs `process` inside that
    /// container (its namespaces, cgroup and root; the process's own user,
    /// env, cwd, terminal, capabilities and rlimits), answered with
    /// `Started { pid }`; from there the side connection works as the main
    /// one does for the container's process (`Stdin`, `CloseStdin`,
    /// `Signal`, `ResizeTty`, `Wait` -> `Exit`). The process dies with the
    /// container.
    Exec { process: Box<ProcessSpec> },
    /// The pids (as the agent sees them) of every process in the container,
    /// answered with `Processes`. Accepted on the main connection and as
    /// the only request of a side connection.
    ListProcesses,
    /// Freezes (`frozen: true`) or thaws the container's processes through
    /// its cgroup, answered with `Frozen` once the cgroup reports the new
    /// state. Accepted on the main connection and on a side connection.
    Freeze { frozen: bool },
    /// End the VM: answered with `ShuttingDown` once the container's volumes
    /// are flushed, after which the host may kill the VM at once (the agent
    /// powers off by itself too).
    Shutdown,
}

impl Message for HostMessage {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        match self {
            HostMessage::Stdin(data) => encode_data(kind::STDIN, data, out),
            other => encode_json(other, out),
        }
    }

    fn decode(frame_kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        match frame_kind {
            kind::JSON => decode_json(payload),
            kind::STDIN => Ok(HostMessage::Stdin(payload.to_vec())),
            other => Err(rejected_kind(other)),
        }
    }
}

/// Agent -> host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Reply to `Hello`, carrying the agent's own version.
    Hello { version: u32 },
    /// Reply to `CreateContainer`.
    Created,
    /// Reply to `Refresh`.
    Refreshed,
    /// Reply to `Start`; `pid` is the process's pid as seen by the agent.
    Started {
        pid: u32,
        /// When the agent came up and started the process, by the guest's
        /// clock. Optional so that agents and hosts of protocol version 1
        /// without it still understand each other.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        times: Option<GuestTimes>,
        /// The guest-side steps of `CreateContainer` and `Start`, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<StepTime>,
    },
    /// Output of the process (with a terminal, all output comes here).
    #[serde(skip)]
    Stdout(Vec<u8>),
    #[serde(skip)]
    Stderr(Vec<u8>),
    /// Reply to `Wait`.
    Exit {
        #[serde(flatten)]
        status: ExitStatus,
        /// The guest-side steps from the exec to this reply.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<StepTime>,
    },
    /// Reply to `ListProcesses`.
    Processes { pids: Vec<u32> },
    /// Reply to `Freeze`: the container's processes are now frozen (or
    /// thawed).
    Frozen { frozen: bool },
    /// Reply to `Shutdown`: the volumes are flushed and the VM may be
    /// killed; the agent powers off right after.
    ShuttingDown,
    /// A request failed, or something went wrong asynchronously (e.g.
    /// writing to the process's stdin).
    Error { message: String },
}

impl Message for AgentMessage {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        match self {
            AgentMessage::Stdout(data) => encode_data(kind::STDOUT, data, out),
            AgentMessage::Stderr(data) => encode_data(kind::STDERR, data, out),
            other => encode_json(other, out),
        }
    }

    fn decode(frame_kind: u8, payload: &[u8]) -> Result<Self, ProtocolError> {
        match frame_kind {
            kind::JSON => decode_json(payload),
            kind::STDOUT => Ok(AgentMessage::Stdout(payload.to_vec())),
            kind::STDERR => Ok(AgentMessage::Stderr(payload.to_vec())),
            other => Err(rejected_kind(other)),
        }
    }
}

/// Agent milestones, in nanoseconds of the guest's CLOCK_BOOTTIME (which
/// starts near guest boot and runs on kvm-clock). The host maps them onto
/// its own clock: `started_ns` is read just before the `Started` reply is
/// sent, so the reply's arrival anchors the guest clock on the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTimes {
    /// The agent's `main` began: the kernel had reached `/init`.
    pub agent_start_ns: u64,
    /// The agent listened on vsock and printed its ready marker.
    pub agent_ready_ns: u64,
    /// The container's process had been started.
    pub started_ns: u64,
}

/// One step of the guest's work for a container, measured by the agent.
/// `name` is short and stable (e.g. `mount:lower`, `clone`, `exec`), so
/// hosts can tabulate steps across runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTime {
    pub name: String,
    /// How long the step took, in ns of the guest's CLOCK_BOOTTIME.
    pub ns: u64,
    /// Page faults (minor + major) taken during the step, by the process
    /// that ran it (the agent, or the container's init for `init:` steps).
    pub faults: u64,
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    #[serde(flatten)]
    pub termination: Termination,
    /// The container's cgroup recorded an OOM kill during the run.
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum Termination {
    Exited { code: i32 },
    Signaled { signal: i32 },
}

impl ExitStatus {
    /// The status a shell would report: the exit code, or 128 + signal.
    pub fn code(&self) -> i32 {
        match self.termination {
            Termination::Exited { code } => code,
            Termination::Signaled { signal } => 128 + signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{read_message, write_message};
    use crate::spec::{ContainerSpec, ProcessSpec};

    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: M) {
        let mut wire = Vec::new();
        write_message(&mut wire, &m).unwrap();
        assert_eq!(read_message::<_, M>(&mut &wire[..]).unwrap(), m);
    }

    #[test]
    fn every_host_message_round_trips() {
        let spec = ContainerSpec::new(ProcessSpec::new(vec!["sh".into(), "-c".into()]));
        for m in [
            HostMessage::Hello { version: 1 },
            HostMessage::Refresh {
                entropy: vec![0, 7, 255],
                realtime_ns: 1_700_000_000_000_000_000,
                hostname: Some("clone-3".into()),
            },
            HostMessage::Refresh {
                entropy: Vec::new(),
                realtime_ns: 0,
                hostname: None,
            },
            HostMessage::CreateContainer {
                spec: Box::new(spec),
            },
            HostMessage::Start,
            HostMessage::Stdin(vec![0, 1, 255]),
            HostMessage::CloseStdin,
            HostMessage::Signal {
                signal: 2,
                all: false,
            },
            HostMessage::Signal {
                signal: 9,
                all: true,
            },
            HostMessage::Exec {
                process: Box::new(ProcessSpec::new(vec!["ps".into()])),
            },
            HostMessage::ListProcesses,
            HostMessage::Freeze { frozen: true },
            HostMessage::ResizeTty { rows: 24, cols: 80 },
            HostMessage::Wait,
            HostMessage::Shutdown,
        ] {
            round_trip(m);
        }
    }

    #[test]
    fn every_agent_message_round_trips() {
        for m in [
            AgentMessage::Hello { version: 1 },
            AgentMessage::Created,
            AgentMessage::Refreshed,
            AgentMessage::Started {
                pid: 42,
                times: None,
                steps: Vec::new(),
            },
            AgentMessage::Started {
                pid: 42,
                times: Some(GuestTimes {
                    agent_start_ns: 1,
                    agent_ready_ns: 2,
                    started_ns: u64::MAX,
                }),
                steps: vec![step("mount:lower", 5, 1), step("exec", 6, 0)],
            },
            AgentMessage::Stdout(b"out".to_vec()),
            AgentMessage::Stderr(b"err".to_vec()),
            AgentMessage::Exit {
                status: ExitStatus {
                    termination: Termination::Exited { code: 3 },
                    oom_killed: false,
                },
                steps: vec![step("wait", 9, 2)],
            },
            AgentMessage::Exit {
                status: ExitStatus {
                    termination: Termination::Signaled { signal: 9 },
                    oom_killed: true,
                },
                steps: Vec::new(),
            },
            AgentMessage::ShuttingDown,
            AgentMessage::Error {
                message: "boom".into(),
            },
        ] {
            round_trip(m);
        }
    }

    fn step(name: &str, ns: u64, faults: u64) -> StepTime {
        StepTime {
            name: name.into(),
            ns,
            faults,
        }
    }

    #[test]
    fn refresh_wire_format() {
        let v = serde_json::to_value(HostMessage::Refresh {
            entropy: vec![1, 2, 254],
            realtime_ns: 1_700_000_000_123_456_789,
            hostname: Some("c1".into()),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "refresh", "entropy": [1, 2, 254],
                "realtime_ns": 1_700_000_000_123_456_789u64, "hostname": "c1"})
        );
        let no_name: HostMessage =
            serde_json::from_str(r#"{"type":"refresh","entropy":[],"realtime_ns":5}"#).unwrap();
        assert_eq!(
            no_name,
            HostMessage::Refresh {
                entropy: vec![],
                realtime_ns: 5,
                hostname: None
            }
        );
        assert_eq!(
            serde_json::to_value(AgentMessage::Refreshed).unwrap(),
            serde_json::json!({"type": "refreshed"})
        );
    }

    #[test]
    fn steps_wire_format() {
        let v = serde_json::to_value(AgentMessage::Started {
            pid: 7,
            times: None,
            steps: vec![step("clone", 10, 3)],
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "started", "pid": 7,
                "steps": [{"name": "clone", "ns": 10, "faults": 3}]})
        );
        let v = serde_json::to_value(AgentMessage::Exit {
            status: ExitStatus {
                termination: Termination::Exited { code: 0 },
                oom_killed: false,
            },
            steps: vec![step("wait", 11, 0)],
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "exit", "how": "exited", "code": 0, "oom_killed": false,
                "steps": [{"name": "wait", "ns": 11, "faults": 0}]})
        );
    }

    #[test]
    fn hello_wire_format_is_stable() {
        let mut wire = Vec::new();
        write_message(&mut wire, &HostMessage::Hello { version: 1 }).unwrap();
        assert_eq!(&wire[5..], br#"{"type":"hello","version":1}"#);
    }

    #[test]
    fn exit_wire_format() {
        let v = serde_json::to_value(AgentMessage::Exit {
            status: ExitStatus {
                termination: Termination::Signaled { signal: 9 },
                oom_killed: true,
            },
            steps: Vec::new(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "exit", "how": "signaled", "signal": 9, "oom_killed": true})
        );
    }

    #[test]
    fn started_without_times_is_version_1_compatible() {
        // What an agent from before `times` existed sends.
        let old: AgentMessage = serde_json::from_str(r#"{"type":"started","pid":7}"#).unwrap();
        assert_eq!(
            old,
            AgentMessage::Started {
                pid: 7,
                times: None,
                steps: Vec::new(),
            }
        );
        // Version 1 exit replies carry no steps.
        let old: AgentMessage =
            serde_json::from_str(r#"{"type":"exit","how":"exited","code":1,"oom_killed":false}"#)
                .unwrap();
        assert!(matches!(old, AgentMessage::Exit { steps, .. } if steps.is_empty()));
        // And a host from before ignores the field it does not know.
        let v = serde_json::to_value(AgentMessage::Started {
            pid: 7,
            times: Some(GuestTimes {
                agent_start_ns: 10,
                agent_ready_ns: 20,
                started_ns: 30,
            }),
            steps: Vec::new(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "started", "pid": 7, "times":
                {"agent_start_ns": 10, "agent_ready_ns": 20, "started_ns": 30}})
        );
        let no_times = serde_json::to_value(AgentMessage::Started {
            pid: 7,
            times: None,
            steps: Vec::new(),
        })
        .unwrap();
        assert_eq!(no_times, serde_json::json!({"type": "started", "pid": 7}));
    }

    #[test]
    fn shell_style_codes() {
        let exited = ExitStatus {
            termination: Termination::Exited { code: 127 },
            oom_killed: false,
        };
        assert_eq!(exited.code(), 127);
        let killed = ExitStatus {
            termination: Termination::Signaled { signal: 9 },
            oom_killed: true,
        };
        assert_eq!(killed.code(), 137);
    }

    #[test]
    fn agent_frames_are_not_host_frames() {
        let mut wire = Vec::new();
        write_message(&mut wire, &HostMessage::Stdin(b"x".to_vec())).unwrap();
        assert!(matches!(
            read_message::<_, AgentMessage>(&mut &wire[..]),
            Err(ProtocolError::WrongDirection(kind::STDIN))
        ));
    }
}
