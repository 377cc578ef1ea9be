//! seccomp filters, one per kind of VMM thread.
//!
//! Every thread the guest can drive gets its own allow-list: the event
//! loop (device emulation, the exit watch, snapshots), each vCPU (KVM_RUN
//! and the MMIO/PIO exits it serves) and the thread that pre-faults a
//! restored snapshot's memory. Anything else kills the whole process with
//! SIGSYS: a guest that has found a bug in a device must not get to make a
//! syscall the device never makes. The lists are in [`rules`]; they are
//! compiled once per process with `seccompiler` and installed by
//! [`crate::vmm::Vmm::run`] on each thread before the first guest
//! instruction runs.

mod rules;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the {0} seccomp filter: {1}")]
    Compile(ThreadKind, seccompiler::BackendError),
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(ThreadKind, seccompiler::Error),
}

/// The kinds of thread a VM runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that calls [`crate::vmm::Vmm::run`]: the event loop.
    EventLoop,
    Vcpu,
    /// Pre-faults a restored snapshot's memory in the background.
    Populate,
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ThreadKind::EventLoop => "event loop",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Populate => "populate",
        })
    }
}

/// The compiled filters of every thread kind.
pub struct ThreadFilters {
    event_loop: BpfProgram,
    vcpu: BpfProgram,
    populate: BpfProgram,
    probe: Option<ThreadKind>,
}

impl ThreadFilters {
    /// Compiles the filters for this host's architecture.
    pub fn compile() -> Result<ThreadFilters, SeccompError> {
        Ok(ThreadFilters {
            event_loop: compile(ThreadKind::EventLoop, rules::event_loop())?,
            vcpu: compile(ThreadKind::Vcpu, rules::vcpu())?,
            populate: compile(ThreadKind::Populate, rules::populate())?,
            probe: None,
        })
    }

    /// Makes threads of `kind` try a forbidden syscall right after their
    /// filter is in: how a test proves the filter is there and kills.
    pub fn with_probe(mut self, kind: ThreadKind) -> ThreadFilters {
        self.probe = Some(kind);
        self
    }

    /// Installs the filter of `kind` on the calling thread (and the threads
    /// it starts later, which inherit it below their own).
    pub(crate) fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let program = match kind {
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Populate => &self.populate,
        };
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind, e))?;
        if self.probe == Some(kind) {
            probe();
        }
        Ok(())
    }
}

fn compile(
    kind: ThreadKind,
    rules: Result<rules::Rules, seccompiler::BackendError>,
) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::x86_64;
    rules
        .and_then(|r| SeccompFilter::new(r, SeccompAction::KillProcess, SeccompAction::Allow, arch))
        .and_then(BpfProgram::try_from)
        .map_err(|e| SeccompError::Compile(kind, e))
}

/// A syscall no VMM thread is allowed: the filter kills the process here.
fn probe() {
    log::warn!("seccomp probe: calling getppid, which the filter forbids");
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_getppid) };
}
