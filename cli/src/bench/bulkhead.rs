//! bulkhead itself: every sample is a `bulkhead run` child process, so the
//! VMM process start is real, and the child reports its phases through
//! `--timings-json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::phases::{cold_run, ColdRun};
use super::programs::tail;
use super::smaps;
use super::workload::Workload;
use crate::run::record::{monotonic_ns, MemorySample, RunRecord};

/// One cold run: phases and the VMM's memory.
#[derive(Debug)]
pub struct ColdSample {
    pub run: ColdRun,
    pub memory: Option<MemorySample>,
}

/// `bulkhead run` children of this very binary.
pub struct Runner {
    exe: PathBuf,
    image: String,
    scratch: PathBuf,
    next: u32,
}

impl Runner {
    pub fn new(image: &str, scratch: &Path) -> anyhow::Result<Runner> {
        Ok(Runner {
            exe: std::env::current_exe().context("cannot find the bulkhead binary")?,
            image: image.to_string(),
            scratch: scratch.to_path_buf(),
            next: 0,
        })
    }

    fn record_path(&mut self) -> PathBuf {
        self.next += 1;
        self.scratch.join(format!("run-{}.json", self.next))
    }

    fn command(&self, record: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run")
            .arg("--timings-json")
            .arg(record)
            .arg(&self.image)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `workload` once in a fresh microVM.
    pub fn cold(&mut self, workload: &Workload) -> anyhow::Result<ColdSample> {
        let record_path = self.record_path();
        let mut cmd = self.command(&record_path, workload.args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_ns = monotonic_ns();
        let child = cmd.spawn().context("cannot start `bulkhead run`")?;
        let output = child
            .wait_with_output()
            .context("lost the `bulkhead run` child")?;
        let exit_ns = monotonic_ns();
        if !output.status.success() {
            bail!(
                "`bulkhead run` failed ({}):\n{}",
                output.status,
                tail(&output.stderr, 20)
            );
        }
        workload.check_output(&output.stdout)?;
        let record = RunRecord::read(&record_path)?;
        let _ = std::fs::remove_file(&record_path);
        let run =
            cold_run(spawn_ns, exit_ns, &record).context("cannot make out the run's phases")?;
        Ok(ColdSample {
            run,
            memory: record.memory,
        })
    }

    /// Starts `k` microVMs running `true` at once.
    pub fn concurrent(&mut self, k: u32) -> anyhow::Result<Concurrent> {
        let mut children: Vec<Started> = Vec::new();
        let start_ns = monotonic_ns();
        for i in 0..k {
            let record = self.record_path();
            let log = self.scratch.join(format!("concurrent-{i}.log"));
            let stderr = std::fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = self.command(&record, &["true"]);
            cmd.stdout(Stdio::null()).stderr(stderr);
            let spawn_ns = monotonic_ns();
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    reap_all(&mut children);
                    return Err(e).context("cannot start `bulkhead run`");
                }
            };
            children.push(Started {
                child,
                spawn_ns,
                exit_ns: None,
                record,
                log,
            });
        }
        let peak_pss_kib = watch(&mut children)?;
        let mut ready_ns = Vec::new();
        let mut boot_ms = Vec::new();
        let mut memory = Vec::new();
        for c in &children {
            let exit_ns = c.exit_ns.unwrap_or_else(monotonic_ns);
            let record = RunRecord::read(&c.record).with_context(|| {
                let log = std::fs::read(&c.log).unwrap_or_default();
                format!("a concurrent run left no record:\n{}", tail(&log, 20))
            })?;
            let run = cold_run(c.spawn_ns, exit_ns, &record)?;
            ready_ns.push(c.spawn_ns as f64 + run.boot_to_agent_ms * 1e6);
            boot_ms.push(run.boot_to_agent_ms);
            memory.extend(record.memory);
        }
        let last_ready = ready_ns.iter().copied().fold(f64::MIN, f64::max);
        Ok(Concurrent {
            all_ready_ms: (last_ready - start_ns as f64) / 1e6,
            boot_to_agent_ms: boot_ms,
            peak_pss_mib: peak_pss_kib as f64 / 1024.0,
            memory,
        })
    }
}

/// K microVMs started together.
#[derive(Debug)]
pub struct Concurrent {
    /// From the first spawn until the last agent was ready.
    pub all_ready_ms: f64,
    /// Each VM's own process start to agent ready.
    pub boot_to_agent_ms: Vec<f64>,
    /// The most the K VMM processes held at once (sum of PSS).
    pub peak_pss_mib: f64,
    /// Each VM's own memory sample.
    pub memory: Vec<MemorySample>,
}

struct Started {
    child: Child,
    spawn_ns: u64,
    exit_ns: Option<u64>,
    record: PathBuf,
    log: PathBuf,
}

const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Waits for every child, sampling their summed PSS; returns its peak.
/// A child that fails fails the whole measurement.
fn watch(children: &mut [Started]) -> anyhow::Result<u64> {
    let mut peak = 0;
    loop {
        let mut pss = 0;
        let mut running = 0;
        for c in children.iter_mut().filter(|c| c.exit_ns.is_none()) {
            match c.child.try_wait() {
                Ok(Some(status)) => {
                    c.exit_ns = Some(monotonic_ns());
                    if !status.success() {
                        let log = std::fs::read(&c.log).unwrap_or_default();
                        reap_all(children);
                        bail!(
                            "a concurrent `bulkhead run` failed ({status}):\n{}",
                            tail(&log, 20)
                        );
                    }
                }
                Ok(None) => {
                    running += 1;
                    // Gone between try_wait and the read: counts as 0.
                    pss += smaps::pss_kib(c.child.id()).unwrap_or(0);
                }
                Err(e) => {
                    reap_all(children);
                    return Err(e).context("cannot wait for a `bulkhead run` child");
                }
            }
        }
        peak = peak.max(pss);
        if running == 0 {
            return Ok(peak);
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}

/// Stops the children still running (their VMs end with them).
fn reap_all(children: &mut [Started]) {
    for c in children.iter_mut().filter(|c| c.exit_ns.is_none()) {
        let _ = c.child.kill();
        let _ = c.child.wait();
        c.exit_ns = Some(monotonic_ns());
    }
}
