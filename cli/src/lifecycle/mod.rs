//! One container's life, whoever drives it: `bulkhead run` (in-process),
//! the runc-compatible commands and the Docker-like ones (through a
//! monitor process that outlives them), and `bench`.
//!
//! As in youki's libcontainer, each operation has its file: `create`
//! (the VM up, the container built in it), `start`, `kill` (and SIGKILL's `kill_deadline`), `exec`,
//! `pause` (and resume, and the process list), `delete`; `state` is the
//! on-disk record every command locks. Below them: `plan` (what the VM is
//! made of), `network` (its TAP and lease), `boot` (template restore or cold boot), `agent` (the vsock
//! session with the guest agent), `vm_spec` (the VM as data) and `vm`
//! (the VMM in its jailed process, or on a thread), `monitor`
//! and its `control` socket, `hooks` (OCI hooks on the host), `signals`
//! and `tty`. Data flows one way: commands call these, these call the
//! VMM and the agent; nothing here knows which command called it.

pub mod agent;
pub mod boot;
pub mod console_log;
pub mod control;
pub mod create;
pub mod delete;
pub mod exec;
pub mod hooks;
pub mod host_cgroup;
pub mod kill;
pub mod kill_deadline;
pub mod monitor;
pub mod network;
pub mod pause;
pub mod plan;
pub mod run_dir;
pub mod signals;
pub mod start;
pub mod state;
pub mod tty;
pub mod vm;
pub mod vm_spec;

pub use create::{create, create_detached};
pub use delete::delete;
pub use exec::exec;
pub use kill::kill;
pub use pause::{pause, processes, resume};
pub use plan::{Disk, Plan};
pub use start::{start, Running};
pub use state::{Exit, Locked, Record, Root, Status};
