//! The VMM baseline: Firecracker booting the same kernel and agent
//! initramfs until the agent's ready marker appears on its serial console.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use bulkhead_protocol::READY_MARKER;
use serde_json::json;

use super::programs::{tail, which};
use super::smaps;
use crate::run::record::{monotonic_ns, MemorySample};

/// As long as bulkhead gives the agent to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Firecracker given with `--firecracker`, else on PATH.
pub fn find(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match explicit {
        Some(p) if p.is_file() => Ok(Some(p.to_path_buf())),
        Some(p) => bail!("--firecracker {}: no such file", p.display()),
        None => Ok(which("firecracker")),
    }
}

/// What the VM boots.
#[derive(Debug, Clone)]
pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub boot_args: String,
    pub mem_mib: u64,
}

/// Firecracker's `--config-file`: one vCPU, no disks, a vsock for the
/// agent to listen on (without one it has nothing to be ready for).
pub fn config(spec: &BootSpec, vsock_uds: &Path) -> serde_json::Value {
    json!({
        "boot-source": {
            "kernel_image_path": spec.kernel,
            "initrd_path": spec.initrd,
            "boot_args": spec.boot_args,
        },
        "drives": [],
        "machine-config": {
            "vcpu_count": 1,
            "mem_size_mib": spec.mem_mib,
        },
        "vsock": {
            "guest_cid": 3,
            "uds_path": vsock_uds,
        },
    })
}

/// Where the guest's vsock device listens (a snapshot keeps the path).
pub fn vsock_socket(dir: &Path) -> PathBuf {
    dir.join("fc-vsock.sock")
}

/// One boot, from process start to the ready marker.
#[derive(Debug)]
pub struct Boot {
    pub boot_to_agent_ms: f64,
    pub memory: Option<MemorySample>,
}

/// Kills Firecracker however the measurement ends.
pub(super) struct Vm(pub Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A booting Firecracker whose console is watched for the ready marker.
pub(super) struct Booting {
    pub vm: Vm,
    pub spawn_ns: u64,
    ready: mpsc::Receiver<u64>,
    reader: std::thread::JoinHandle<Vec<String>>,
    log_path: PathBuf,
}

/// Starts Firecracker on `spec` (written as its config file) with
/// `args` before `--config-file`.
pub(super) fn start(
    fc: &Path,
    args: &[&OsStr],
    spec: &BootSpec,
    dir: &Path,
) -> anyhow::Result<Booting> {
    let uds = vsock_socket(dir);
    let _ = std::fs::remove_file(&uds);
    let cfg_path = dir.join("fc-config.json");
    std::fs::write(&cfg_path, config(spec, &uds).to_string())
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    let log_path = dir.join("fc-stderr.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;

    let mut cmd = Command::new(fc);
    cmd.args(args)
        .arg("--config-file")
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let spawn_ns = monotonic_ns();
    let mut vm = Vm(cmd
        .spawn()
        .with_context(|| format!("cannot start {}", fc.display()))?);
    let console = vm.0.stdout.take().context("no console pipe")?;

    // The console is read on a thread so the wait for the marker can time
    // out; the thread keeps draining so Firecracker never blocks on a full
    // pipe.
    let (tx, ready) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut sent = false;
        for line in BufReader::new(console).split(b'\n').map_while(Result::ok) {
            if !sent
                && line
                    .windows(READY_MARKER.len())
                    .any(|w| w == READY_MARKER.as_bytes())
            {
                let _ = tx.send(monotonic_ns());
                sent = true;
            }
            if lines.len() < 200 {
                lines.push(String::from_utf8_lossy(&line).into_owned());
            }
        }
        lines
    });
    Ok(Booting {
        vm,
        spawn_ns,
        ready,
        reader,
        log_path,
    })
}

impl Booting {
    /// When the agent's ready marker appeared, or why it never did (the
    /// VM is ended then, and its console and stderr quoted).
    pub fn wait_ready(self) -> Result<(Booting, u64), anyhow::Error> {
        match self.ready.recv_timeout(READY_TIMEOUT) {
            Ok(at) => Ok((self, at)),
            Err(_) => Err(self.failure(&format!("Firecracker never printed {READY_MARKER:?}"))),
        }
    }

    /// Ends the VM; `what` went wrong, explained by its console and stderr.
    pub fn failure(self, what: &str) -> anyhow::Error {
        let log_path = self.log_path.clone();
        let console_lines = self.finish();
        let stderr = std::fs::read(&log_path).unwrap_or_default();
        let n = console_lines.len();
        anyhow::anyhow!(
            "{what}\nconsole (last lines):\n{}\nstderr:\n{}",
            console_lines[n.saturating_sub(15)..].join("\n"),
            tail(&stderr, 10)
        )
    }

    /// Ends the VM; returns the console lines it printed.
    pub fn finish(self) -> Vec<String> {
        drop(self.vm);
        self.reader.join().unwrap_or_default()
    }
}

pub fn boot_once(fc: &Path, spec: &BootSpec, dir: &Path) -> anyhow::Result<Boot> {
    let args = ["--no-api", "--no-seccomp"].map(OsStr::new);
    let booting = start(fc, &args, spec, dir)?;
    let (booting, ready_ns) = booting.wait_ready()?;
    let memory = smaps::sample_vmm(Some(booting.vm.0.id()), spec.mem_mib).ok();
    let spawn_ns = booting.spawn_ns;
    booting.finish();
    Ok(Boot {
        boot_to_agent_ms: (ready_ns - spawn_ns) as f64 / 1e6,
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_boots_kernel_and_initrd_with_a_vsock() {
        let spec = BootSpec {
            kernel: "/k/vmlinux".into(),
            initrd: "/i/agent.cpio".into(),
            boot_args: "console=ttyS0 reboot=k".into(),
            mem_mib: 128,
        };
        let cfg = config(&spec, Path::new("/tmp/v.sock"));
        assert_eq!(cfg["boot-source"]["kernel_image_path"], "/k/vmlinux");
        assert_eq!(cfg["boot-source"]["initrd_path"], "/i/agent.cpio");
        assert_eq!(cfg["boot-source"]["boot_args"], "console=ttyS0 reboot=k");
        assert_eq!(cfg["machine-config"]["mem_size_mib"], 128);
        assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
        assert_eq!(cfg["vsock"]["uds_path"], "/tmp/v.sock");
        assert_eq!(cfg["drives"], json!([]));
    }

    #[test]
    fn explicit_path_must_exist() {
        assert!(find(Some(Path::new("/nonexistent/firecracker"))).is_err());
        let dir = tempfile::tempdir().unwrap();
        let fc = dir.path().join("firecracker");
        std::fs::write(&fc, "").unwrap();
        assert_eq!(find(Some(&fc)).unwrap(), Some(fc));
    }
}
