//! The jail each VMM runs in, like Firecracker's jailer but built in: the
//! VM of a container is built and run by a process of its own
//! (`bulkhead jailed-vmm`, hidden), which is PID 1 of new PID, mount, IPC,
//! UTS and network namespaces, sees only its VM's files (`layout`,
//! mounted by `inside` after `pivot_root`), and once the VM is built and
//! before the guest's first instruction gives up root, every capability
//! and any way back (`privileges`), under the seccomp filters of each
//! thread. The process that drives the container (`bulkhead run`, a
//! monitor) keeps what needs the host: TAPs, cgroups, virtiofsd, the
//! agent session; `launch` starts the jailed VMM from it and hands it
//! the spec, the console log and the TAP.
//!
//! The two talk over the jailed VMM's stdin and stdout: a [`Request`]
//! line in, [`Report`] lines out; any byte written to its stdin after the
//! request, or its end (the driver died), stops the VM.

pub mod inside;
pub mod launch;
pub mod layout;
mod privileges;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::lifecycle::vm_spec::VmSpec;

pub use launch::{JailError, JailedVm};

/// The descriptors the jailed VMM finds open.
const CONSOLE_FD: i32 = 3;
const TAP_FD: i32 = 4;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub spec: VmSpec,
    /// The container's directory on the host, bound in as /vm.
    pub run_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Report {
    /// The VM is built and its privileges gone; the guest runs next.
    /// `pid`: the VMM's on the host.
    Ready { pid: u32 },
    /// The VM could not be built; `template_fault`: the snapshot itself
    /// (stale, corrupt) is to blame, and a rebuilt template may do.
    Failed {
        message: String,
        template_fault: bool,
    },
    /// How the VM ended.
    Ended(Ended),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ended {
    GuestShutdown,
    Stopped,
    Failed(String),
}
