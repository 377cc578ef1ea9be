//! Firecracker's own snapshot restore, the anchor for bulkhead's: the same
//! guest booted to a ready agent and snapshotted through the API (pause,
//! full snapshot), then a fresh Firecracker process timed from its start
//! to the response to `PUT /snapshot/load` with `resume_vm`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::fc_api;
use super::firecracker::{self, BootSpec, Vm};
use super::programs::tail;
use super::smaps::{self, Rollup};
use crate::run::record::monotonic_ns;

/// Firecracker creates its API socket within milliseconds of starting.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A full snapshot's two files.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: PathBuf,
    pub memory: PathBuf,
}

/// `PUT /snapshot/create`: everything, not a diff.
pub fn create_body(snap: &Snapshot) -> serde_json::Value {
    json!({
        "snapshot_type": "Full",
        "snapshot_path": snap.state,
        "mem_file_path": snap.memory,
    })
}

/// `PUT /snapshot/load`: the memory file as the guest's backing, running
/// again at once.
pub fn load_body(snap: &Snapshot) -> serde_json::Value {
    json!({
        "snapshot_path": snap.state,
        "mem_backend": { "backend_type": "File", "backend_path": snap.memory },
        "resume_vm": true,
    })
}

fn api_socket(dir: &Path) -> PathBuf {
    dir.join("fc-api.sock")
}

/// Boots `spec` to a ready agent and snapshots it into `dir`.
pub fn create(fc: &Path, spec: &BootSpec, dir: &Path) -> anyhow::Result<Snapshot> {
    let api = api_socket(dir);
    let _ = std::fs::remove_file(&api);
    let args = [
        OsStr::new("--api-sock"),
        api.as_os_str(),
        OsStr::new("--no-seccomp"),
    ];
    let (booting, _) = firecracker::start(fc, &args, spec, dir)?.wait_ready()?;
    let snap = Snapshot {
        state: dir.join("fc-snapshot.state"),
        memory: dir.join("fc-snapshot.mem"),
    };
    let made = fc_api::call(&api, "PATCH", "/vm", &json!({ "state": "Paused" }))
        .and_then(|_| fc_api::call(&api, "PUT", "/snapshot/create", &create_body(&snap)));
    let result = match made {
        Ok(_) => {
            booting.finish();
            Ok(snap)
        }
        Err(e) => Err(booting.failure(&format!("cannot snapshot Firecracker: {e}"))),
    };
    let _ = std::fs::remove_file(&api);
    result
}

/// One restore of `snap`.
#[derive(Debug)]
pub struct Load {
    /// Process start to the response to the load request.
    pub ms: f64,
    /// The process right after the load.
    pub memory: Option<Rollup>,
}

/// Starts a fresh Firecracker and loads `snap` into it.
pub fn load_once(fc: &Path, snap: &Snapshot, dir: &Path) -> anyhow::Result<Load> {
    let api = api_socket(dir);
    let _ = std::fs::remove_file(&api);
    // The restored vsock device binds the socket path it had again.
    let vsock = firecracker::vsock_socket(dir);
    let _ = std::fs::remove_file(&vsock);
    let log_path = dir.join("fc-load-stderr.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(fc);
    cmd.arg("--api-sock")
        .arg(&api)
        .arg("--no-seccomp")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let spawn_ns = monotonic_ns();
    let mut vm = Vm(cmd
        .spawn()
        .with_context(|| format!("cannot start {}", fc.display()))?);
    let loaded = fc_api::wait_for_socket(&api, &mut vm.0, SOCKET_TIMEOUT)
        .and_then(|_| fc_api::call(&api, "PUT", "/snapshot/load", &load_body(snap)));
    let done_ns = monotonic_ns();
    let memory = smaps::rollup(vm.0.id()).ok();
    drop(vm);
    let _ = std::fs::remove_file(&api);
    let _ = std::fs::remove_file(&vsock);
    match loaded {
        Ok(_) => Ok(Load {
            ms: (done_ns - spawn_ns) as f64 / 1e6,
            memory,
        }),
        Err(e) => {
            let stderr = std::fs::read(&log_path).unwrap_or_default();
            Err(anyhow::anyhow!(
                "{e}\nFirecracker's stderr:\n{}",
                tail(&stderr, 10)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot {
            state: "/s/fc.state".into(),
            memory: "/s/fc.mem".into(),
        }
    }

    #[test]
    fn create_asks_for_a_full_snapshot() {
        assert_eq!(
            create_body(&snap()),
            json!({"snapshot_type": "Full", "snapshot_path": "/s/fc.state",
                   "mem_file_path": "/s/fc.mem"})
        );
    }

    #[test]
    fn load_resumes_from_the_memory_file() {
        let body = load_body(&snap());
        assert_eq!(body["snapshot_path"], "/s/fc.state");
        assert_eq!(body["mem_backend"]["backend_type"], "File");
        assert_eq!(body["mem_backend"]["backend_path"], "/s/fc.mem");
        assert_eq!(body["resume_vm"], true);
        assert!(body.get("mem_file_path").is_none());
    }
}
