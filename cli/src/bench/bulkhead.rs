//! bulkhead itself: every sample is a `bulkhead run` child process, so the
//! VMM process start is real, and the child reports its phases through
//! `--timings-json`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::phases::{agent_connected_ms, cold_run, warm_run};
use super::programs::{tail, wait_with_timeout};
use super::smaps::{self, Rollup};
use super::workload::Workload;
use crate::run::record::{monotonic_ns, BootKind, MemorySample, RunRecord};

/// One `bulkhead run`: its phases and the VMM's memory.
#[derive(Debug)]
pub struct Sample {
    /// `(phase, ms)`: [`super::phases::PHASES`] for cold runs,
    /// [`super::phases::WARM_PHASES`] for warm ones.
    pub phases: Vec<(&'static str, f64)>,
    pub total_ms: f64,
    /// Process start to a connected agent.
    pub agent_connected_ms: f64,
    /// Cold runs: process start to the agent's ready marker, and how long
    /// after the first KVM_RUN the guest clock read zero.
    pub boot_to_agent_ms: Option<(f64, f64)>,
    pub memory: Option<MemorySample>,
}

/// `bulkhead run` children of this very binary.
pub struct Runner {
    exe: PathBuf,
    image: String,
    scratch: PathBuf,
    next: u32,
}

/// As long as a run may take here: a cold boot on a PVM host is ~45 s,
/// and K of them share two cores.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// What an idle container in the concurrent measurement runs: it says it
/// runs, then waits for its stdin to close, so it ends cleanly (with its
/// record written) when the bench is done with it.
const IDLE_COMMAND: [&str; 3] = ["sh", "-c", "echo running; read x; exit 0"];
const IDLE_READY_LINE: &str = "running";

fn boot_flags(boot: BootKind) -> &'static [&'static str] {
    match boot {
        BootKind::Warm => &[],
        BootKind::Cold => &["--cold"],
    }
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

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    fn record_path(&mut self) -> PathBuf {
        self.next += 1;
        self.scratch.join(format!("run-{}.json", self.next))
    }

    fn command(&self, record: &Path, flags: &[&str], args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        // As runc's bundles: a network namespace with only lo.
        cmd.arg("run")
            .args(["--network", "none"])
            .arg("--timings-json")
            .arg(record)
            .args(flags)
            .arg(&self.image)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `workload` once in a fresh microVM, restored or booted.
    pub fn sample(&mut self, workload: &Workload, boot: BootKind) -> anyhow::Result<Sample> {
        let record_path = self.record_path();
        let mut cmd = self.command(&record_path, boot_flags(boot), workload.args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_ns = monotonic_ns();
        let child = cmd.spawn().context("cannot start `bulkhead run`")?;
        let output = wait_with_timeout(child, RUN_TIMEOUT).context("`bulkhead run`")?;
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
        check_boot(&record, boot)?;
        let memory = record.memory;
        let cant = "cannot make out the run's phases";
        match boot {
            BootKind::Warm => {
                let run = warm_run(spawn_ns, exit_ns, &record).context(cant)?;
                Ok(Sample {
                    phases: run.phases,
                    total_ms: run.total_ms,
                    agent_connected_ms: run.agent_connected_ms,
                    boot_to_agent_ms: None,
                    memory,
                })
            }
            BootKind::Cold => {
                let run = cold_run(spawn_ns, exit_ns, &record).context(cant)?;
                Ok(Sample {
                    phases: run.phases,
                    total_ms: run.total_ms,
                    agent_connected_ms: agent_connected_ms(spawn_ns, &record).context(cant)?,
                    boot_to_agent_ms: Some((run.boot_to_agent_ms, run.guest_clock_origin_ms)),
                    memory,
                })
            }
        }
    }

    /// Starts `k` restored microVMs at once, each running an idle
    /// container; once all run their container, samples each VMM's
    /// memory, then lets them end.
    pub fn concurrent_idle(&mut self, k: u32) -> anyhow::Result<Concurrent> {
        let (tx, rx) = mpsc::channel();
        let mut children = Idle(Vec::new());
        let start_ns = monotonic_ns();
        for i in 0..k as usize {
            let record = self.record_path();
            let log = self.scratch.join(format!("concurrent-{i}.log"));
            let stderr = std::fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = self.command(&record, &["-i"], &IDLE_COMMAND);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(stderr);
            let mut child = cmd.spawn().context("cannot start `bulkhead run`")?;
            if let Some(out) = child.stdout.take() {
                let tx = tx.clone();
                // Tells when the container printed its line; then drains.
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        if line.trim() == IDLE_READY_LINE {
                            let _ = tx.send((i, monotonic_ns()));
                        }
                    }
                });
            }
            children.0.push(IdleVm { child, log, record });
        }
        let running_ns = children.wait_running(&rx, k as usize)?;
        let all_running_ms = (running_ns - start_ns) as f64 / 1e6;
        let memory = children
            .0
            .iter()
            .map(|c| smaps::rollup(c.child.id()))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot sample a VMM's memory")?;
        children.end()?;
        Ok(Concurrent {
            all_running_ms,
            memory,
        })
    }
}

/// A record must say it was the kind of run asked for, and a warm sample
/// must not have made its template (that would time a boot).
fn check_boot(record: &RunRecord, boot: BootKind) -> anyhow::Result<()> {
    if record.boot != Some(boot) {
        bail!(
            "asked for a {boot:?} run, but the run reports {:?}",
            record.boot
        );
    }
    if record.template_built {
        bail!("the run made its template first: not a warm sample");
    }
    Ok(())
}

/// K restored microVMs, each with an idle container.
#[derive(Debug)]
pub struct Concurrent {
    /// From the first spawn until the last container ran.
    pub all_running_ms: f64,
    /// Each VMM process once all ran.
    pub memory: Vec<Rollup>,
}

struct IdleVm {
    child: Child,
    log: PathBuf,
    record: PathBuf,
}

/// The idle runs; any still running when this is dropped are killed.
struct Idle(Vec<IdleVm>);

/// How long the idle runs get to come up (K restores sharing two cores on a
/// PVM host) and to end once their stdin closes.
const IDLE_UP_TIMEOUT: Duration = Duration::from_secs(600);
const IDLE_END_TIMEOUT: Duration = Duration::from_secs(120);

impl Idle {
    /// Waits until every run's container printed its line; returns when the
    /// last did. A run that ends first fails the measurement.
    fn wait_running(&mut self, rx: &mpsc::Receiver<(usize, u64)>, k: usize) -> anyhow::Result<u64> {
        let deadline = Instant::now() + IDLE_UP_TIMEOUT;
        let mut seen = vec![false; k];
        let mut last = 0;
        while seen.iter().any(|s| !s) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok((i, at)) => {
                    seen[i] = true;
                    last = last.max(at);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("every concurrent run closed its output before running")
                }
            }
            for c in &mut self.0 {
                if let Ok(Some(status)) = c.child.try_wait() {
                    let log = std::fs::read(&c.log).unwrap_or_default();
                    bail!(
                        "a concurrent `bulkhead run` ended early ({status}):\n{}",
                        tail(&log, 20)
                    );
                }
            }
            if Instant::now() >= deadline {
                let up = seen.iter().filter(|s| **s).count();
                bail!(
                    "only {up} of {k} concurrent runs were running after {} s",
                    IDLE_UP_TIMEOUT.as_secs()
                );
            }
        }
        Ok(last)
    }

    /// Closes every container's stdin so it exits, and waits for the runs.
    fn end(mut self) -> anyhow::Result<()> {
        for c in &mut self.0 {
            drop(c.child.stdin.take());
        }
        let deadline = Instant::now() + IDLE_END_TIMEOUT;
        let mut failed = None;
        for c in &mut self.0 {
            let status = loop {
                match c.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => break None,
                }
            };
            if !status.is_some_and(|s| s.success()) && failed.is_none() {
                let log = std::fs::read(&c.log).unwrap_or_default();
                failed = Some(format!("{status:?}:\n{}", tail(&log, 10)));
            }
        }
        // Drop kills what did not end.
        drop(self);
        match failed {
            Some(why) => bail!("a concurrent run did not end cleanly: {why}"),
            None => Ok(()),
        }
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.child.try_wait(), Ok(None)) {
                let _ = c.child.kill();
            }
            let _ = c.child.wait();
            let _ = std::fs::remove_file(&c.record);
        }
    }
}
