//! The host <-> guest-agent protocol of bulkhead.
//!
//! The host (the `bulkhead` CLI) and the agent (PID 1 inside the microVM)
//! talk over one byte stream (vsock in production, a Unix socket in tests).
//! Every message travels in one frame (see [`frame`]): control messages are
//! JSON, stdio data is sent raw so that bulk output costs no encoding.
//!
//! A session goes:
//! 1. host `Hello { version }` -> agent `Hello { version }` (the agent closes
//!    the connection after its reply if the versions differ);
//! 2. only for a VM restored from a template, before any container:
//!    `Refresh { entropy, realtime_ns, hostname }` -> `Refreshed`;
//! 3. `CreateContainer { spec }` -> `Created`;
//! 4. `Start` -> `Started { pid, times, steps }` (`times`: the agent's boot
//!    milestones, `steps`: its per-container work, both optional); from
//!    here on the agent streams
//!    `Stdout`/`Stderr` frames and the host may send `Stdin`, `CloseStdin`,
//!    `Signal`, `ResizeTty` (no replies; failures come back as `Error`);
//! 5. `Wait` -> `Exit { status, steps }`, sent once the process has exited
//!    and all of its output has been forwarded;
//! 6. `Shutdown` -> `ShuttingDown`, sent once the container's volumes are
//!    flushed: the host may kill the VM at once; the agent powers it off
//!    too, in case the host does not.
//!
//! Any request may instead be answered with `Error { message }`.
//!
//! While a container is started, the host may open more connections to the
//! same port (*side connections*): after `Hello`, one `Exec { process }`
//! runs a further process in the container and serves its stdio as in
//! steps 4 and 5; `ListProcesses` -> `Processes` and `Freeze` -> `Frozen`
//! are answered on either kind of connection.

pub mod client;
pub mod error;
pub mod frame;
pub mod message;
pub mod network;
pub mod spec;

pub use client::{AgentClient, AgentReader, AgentWriter, Event, Started, TryClone};
pub use error::ProtocolError;
pub use frame::{read_message, write_message, FrameDecoder, MAX_DATA_CHUNK, MAX_FRAME_LEN};
pub use message::{
    AgentMessage, ExitStatus, GuestTimes, HostMessage, Message, StepTime, Termination,
};
pub use network::{Ipv4Prefix, NetworkFiles, NetworkSpec, NetworkSpecError, RouteSpec};
pub use spec::{
    ContainerSpec, ProcessSpec, Resources, Rlimit, RlimitKind, Source, SpecError, Storage, TtySize,
    User, Volume, VIRTIOFS_TAG_MAX,
};

/// The protocol version spoken by this build. Bump it on any incompatible
/// change to the messages or the spec.
///
/// 2: `Refresh`/`Refreshed`; `steps` in `Started` and `Exit`; `ShuttingDown`
/// comes after the volumes are flushed and the VM may be killed at once.
/// 3: `Source::Virtiofs` (volumes shared from host directories).
/// 4: side connections (`Exec`, `ListProcesses`, `Freeze`), `Signal.all`;
/// OCI fields in the spec (in-place and read-only roots, masked and
/// read-only paths, sysctls, a seccomp filter, tmpfs and sub-path
/// volumes).
/// 5: `ContainerSpec.network` (eth0, routes, name-service files).
pub const PROTOCOL_VERSION: u32 = 5;

/// The vsock port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The line the agent prints on the serial console once it listens.
pub const READY_MARKER: &str = "bulkhead-agent: ready";
