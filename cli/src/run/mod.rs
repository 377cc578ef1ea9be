//! `bulkhead run`: a container from an OCI image, in its own microVM.
//!
//! image → plan (root disk cached by digest, scratch and volume disks,
//! host directories) → the lifecycle: create (VM restored or booted,
//! container built) → start → output until exit → VM off → the
//! container's exit status is ours. With `-d`, a monitor process holds the
//! container instead and `run` prints its id.

mod detach;
mod image_plan;
mod mounts;
mod options;
pub mod record;
mod timings;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use crate::pull::{PullPolicy, RegistryArgs};

use crate::lifecycle::boot::Boot;
use crate::lifecycle::run_dir::RunDir;
pub use crate::lifecycle::signals::SignalRouter;
use crate::lifecycle::{self, agent, tty, Running};
use image_plan::Request;
use timings::Timings;

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Set an environment variable (NAME=value, or NAME to pass ours on).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User (name|uid)[:(group|gid)] inside the container.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPU limit, in CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// `size=SIZE`: the container's writable layer (its scratch disk;
    /// default 1g, at least 8m). A full one is the container's ENOSPC.
    #[arg(long = "storage-opt", value_name = "size=SIZE")]
    pub storage_opt: Vec<String>,
    /// Named volume NAME:/path[:ro] (an ext4 disk kept by bulkhead), or
    /// host directory /host/dir:/path[:ro] (shared through virtio-fs).
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// type=bind,source=/host/dir,target=/path[,readonly] or
    /// type=volume,source=NAME,target=/path[,readonly].
    #[arg(long = "mount", value_name = "SPEC")]
    pub mounts: Vec<String>,
    /// Connect the container to a network: `bridge` (the default one),
    /// `none` (only lo), or a network made by `bulkhead network create`.
    #[arg(long, visible_alias = "net", default_value = "bridge")]
    pub network: String,
    /// Publish a container port on the host: [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]
    /// (HOSTPORT empty, or CTRPORT alone: a random free port).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes, each on a random host port.
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// A nameserver for the container's resolv.conf (instead of the host's).
    #[arg(long)]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the container a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Remove the container when it exits (always so without -d).
    #[arg(long)]
    pub rm: bool,
    /// Run in the background (a monitor process holds the VM) and print
    /// the container's id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Name the container (its id); default: 12 random hex digits.
    #[arg(long)]
    pub name: Option<String>,
    /// Print how long each phase took to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Boot a fresh guest kernel instead of restoring a template.
    #[arg(long)]
    pub cold: bool,
    /// Write phase timestamps, guest milestones and VMM memory as JSON
    /// (for `bulkhead bench`).
    #[arg(long, hide = true, value_name = "FILE")]
    pub timings_json: Option<PathBuf>,
    /// When to pull the image from its registry.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image: [REGISTRY/]NAME[:TAG|@DIGEST] (pulled if missing), oci:DIR[:TAG],
    /// docker-archive:FILE, dir:PATH.
    pub image: String,
    /// Command and arguments (default: the image's).
    pub command: Vec<String>,
}

/// Runs the container; errors of bulkhead itself exit 125, like Docker.
pub fn run(args: RunArgs, root: lifecycle::Root) -> ExitCode {
    let result = if args.detach {
        detach::run(&args, &root)
    } else {
        run_container(&args)
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn run_container(args: &RunArgs) -> anyhow::Result<u8> {
    let router = SignalRouter::install()?;
    let mut timings = Timings::new();
    let request = Request::check(args)?;
    let run_dir = RunDir::create()?;
    let plan = image_plan::plan(
        args,
        &request,
        run_dir.path(),
        &run_id(run_dir.path()),
        &mut timings,
    )?;
    let created = lifecycle::create(&plan, run_dir.path(), &router, &mut |phase| {
        timings.mark(phase)
    })?;
    let _raw = if args.tty {
        tty::RawMode::enter()
    } else {
        None
    };
    let mut running = created.start()?;
    timings.mark(record::mark::CONTAINER_STARTED);
    let writer = running.writer();
    router.set_container(writer.clone(), args.tty);
    if args.interactive {
        agent::forward_stdin(writer);
    } else if let Ok(mut w) = writer.lock() {
        w.close_stdin()?;
    }
    let mut first_output = None;
    let status = match running.wait(|| first_output = Some(Instant::now())) {
        Ok(s) => s,
        Err(e) => return Err(running.fail(e)),
    };
    timings.mark(record::mark::EXITED);
    let report = Report::take(args, &running, plan.mem_mib);
    let ended = running.end();
    timings.mark(record::mark::VM_GONE);
    drop(_raw);

    if let Err(e) = ended {
        eprintln!("bulkhead: the microVM did not shut down cleanly: {e}");
    }
    if status.oom_killed {
        eprintln!(
            "bulkhead: the container was killed: out of memory (limit {})",
            args.memory.as_deref().unwrap_or("none")
        );
    }
    report.write(args, &timings, first_output);
    Ok(status.code().clamp(0, 255) as u8)
}

/// What `--timings` and `--timings-json` say of a run, taken before its
/// VM ends.
struct Report {
    boot: Boot,
    memory: Option<record::MemorySample>,
    guest_times: Option<(bulkhead_protocol::GuestTimes, Instant)>,
    steps: Vec<bulkhead_protocol::StepTime>,
    run_started: Option<Instant>,
}

impl Report {
    fn take(args: &RunArgs, running: &Running, guest_mib: u64) -> Report {
        // While the guest still holds all it touched.
        let memory = args.timings_json.as_ref().and_then(|_| {
            crate::bench::smaps::sample_vmm(running.vmm_pid(), guest_mib)
                .map_err(|e| eprintln!("bulkhead: cannot sample the VMM's memory: {e}"))
                .ok()
        });
        Report {
            boot: running.boot().clone(),
            memory,
            guest_times: running.guest_times(),
            steps: running.steps().to_vec(),
            run_started: running.run_started(),
        }
    }

    fn write(self, args: &RunArgs, timings: &Timings, first_output: Option<Instant>) {
        if args.timings {
            match &self.boot {
                Boot::Warm { template, built } => eprintln!(
                    "bulkhead: timing: warm start: restored template {template}{}",
                    if *built { " (made by this run)" } else { "" }
                ),
                Boot::Cold => eprintln!("bulkhead: timing: cold start: booted the guest kernel"),
            }
            if let Some(at) = first_output {
                eprintln!(
                    "bulkhead: timing: first output after {:.1} ms",
                    at.duration_since(timings.start).as_secs_f64() * 1e3
                );
            }
            timings.report();
            report_steps(&self.steps);
        }
        if let Some(path) = &args.timings_json {
            let mut record = timings.record(self.run_started, self.guest_times, self.memory);
            (record.boot, record.template_built) = match &self.boot {
                Boot::Warm { built, .. } => (Some(record::BootKind::Warm), *built),
                Boot::Cold => (Some(record::BootKind::Cold), false),
            };
            if let Err(e) = record.write(path) {
                eprintln!("bulkhead: {e:#}");
            }
        }
    }
}

/// The guest's own account of the container's steps (agent clock).
fn report_steps(steps: &[bulkhead_protocol::StepTime]) {
    for s in steps {
        eprintln!(
            "bulkhead: guest step: {:<20} {:>9.1} ms {:>6} faults",
            s.name,
            s.ns as f64 / 1e6,
            s.faults
        );
    }
}

/// A 12-hex-digit container id from the run directory's random name.
fn run_id(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digest = bulkhead_rootfs::Digest::of(name.as_bytes());
    digest.hex()[..12].to_string()
}
