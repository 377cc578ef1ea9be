//! How the VMs bulkhead runs are confined on the host: each VMM in a jail
//! of its own (see `crate::jail`), a seccomp filter on every VMM thread
//! (see `bulkhead_vmm::seccomp`), both on unless `--jail off` or
//! `--seccomp off` ask otherwise, which is for debugging only; and no core
//! dumps of a process that holds a VM, whose core would be the tenant's
//! memory.

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use bulkhead_vmm::seccomp::{ThreadFilters, ThreadKind};
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JailMode {
    On,
    Off,
}

/// A test hook: the named thread kind (`vcpu`, `event-loop`, `populate`)
/// makes a forbidden syscall right after its filter is in.
const PROBE_ENV: &str = "BULKHEAD_SECCOMP_PROBE";

static MODE: OnceLock<SeccompMode> = OnceLock::new();
static JAIL: OnceLock<JailMode> = OnceLock::new();
static FILTERS: OnceLock<Arc<ThreadFilters>> = OnceLock::new();

/// Set once, from the command line, before any VM is made.
pub fn set_seccomp(mode: SeccompMode) {
    let _ = MODE.set(mode);
}

pub fn seccomp() -> SeccompMode {
    *MODE.get().unwrap_or(&SeccompMode::On)
}

/// Set once, from the command line, before any VM is made.
pub fn set_jail(mode: JailMode) {
    let _ = JAIL.set(mode);
}

pub fn jail() -> JailMode {
    *JAIL.get().unwrap_or(&JailMode::On)
}

/// The filters for a new VM's threads, compiled once per process; `None`
/// when seccomp is off. Called before each VM is made, so it also turns
/// core dumps off for this process.
pub fn vmm_filters() -> anyhow::Result<Option<Arc<ThreadFilters>>> {
    no_core_dumps()?;
    if seccomp() == SeccompMode::Off {
        return Ok(None);
    }
    if let Some(f) = FILTERS.get() {
        return Ok(Some(f.clone()));
    }
    let mut filters = ThreadFilters::compile().context("cannot confine the VMM")?;
    if let Some(kind) = probe_kind() {
        filters = filters.with_probe(kind);
    }
    Ok(Some(FILTERS.get_or_init(|| Arc::new(filters)).clone()))
}

fn probe_kind() -> Option<ThreadKind> {
    match std::env::var(PROBE_ENV).ok()?.as_str() {
        "vcpu" => Some(ThreadKind::Vcpu),
        "event-loop" => Some(ThreadKind::EventLoop),
        "populate" => Some(ThreadKind::Populate),
        _ => None,
    }
}

/// RLIMIT_CORE 0, soft and hard: a crash must not write guest memory to
/// the host's disk, nor may anything in this process raise the limit back.
fn no_core_dumps() -> anyhow::Result<()> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .context("cannot turn core dumps off")
}
