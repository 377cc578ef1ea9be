//! `bulkhead run`: a container from an OCI image, in its own microVM.
//!
//! image → root disk (cached by digest) → scratch and volume disks, a
//! virtiofsd per shared host directory → boot (kernel + agent initramfs)
//! → agent on vsock → container → stdio → exit status → VM off → the
//! container's exit status is ours.

mod mounts;
mod options;
pub mod record;
mod run_dir;
mod session;
mod signals;
mod tty;
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_protocol::{
    ContainerSpec, ProcessSpec, Resources, Source, Storage, TtySize, User, Volume,
};
use bulkhead_rootfs::{ImageRef, RunOverrides, Store};
use bulkhead_vmm::config::{ConsoleOutput, DiskConfig, FsConfig, VmConfig, VsockConfig};
use clap::Args;

use crate::paths;
use crate::share::{self, HostDir, Shares};
use crate::template::{self, TemplateSpec, MAX_WARM_SHARES, MAX_WARM_VOLUMES, SHARE_SLOTS};
use bulkhead_vmm::builder::{BuildError, RestoreConfig};
use mounts::MountSource;
use options::{parse_cpus, parse_size, CPU_PERIOD_US};
use run_dir::RunDir;
pub use session::console_tail;
use session::{Refresh, Session};
pub use signals::SignalRouter;
use vm::RunningVm;

/// Guest RAM beyond the container's memory limit: kernel, agent, page cache.
const VM_OVERHEAD_MIB: u64 = 64;
const DEFAULT_VM_MIB: u64 = 128;
const SCRATCH_MIB: u64 = 1024;
/// How long a failed run waits for a dying virtiofsd's exit status, to
/// blame it rather than what its death broke.
const SHARE_GRACE: Duration = Duration::from_millis(200);

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Set an environment variable (NAME=value, or NAME to pass ours on).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User (name|uid)[:(group|gid)] inside the container.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// CPU limit, in CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Named volume NAME:/path[:ro] (an ext4 disk kept by bulkhead), or
    /// host directory /host/dir:/path[:ro] (shared through virtio-fs).
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// type=bind,source=/host/dir,target=/path[,readonly] or
    /// type=volume,source=NAME,target=/path[,readonly].
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Accepted for Docker compatibility: bulkhead never keeps containers.
    #[arg(long)]
    rm: bool,
    /// Print how long each phase took to stderr.
    #[arg(long)]
    timings: bool,
    /// Boot a fresh guest kernel instead of restoring a template.
    #[arg(long)]
    cold: bool,
    /// Write phase timestamps, guest milestones and VMM memory as JSON
    /// (for `bulkhead bench`).
    #[arg(long, hide = true, value_name = "FILE")]
    timings_json: Option<PathBuf>,
    /// Image: NAME, oci:DIR[:TAG], docker-archive:FILE, dir:PATH.
    image: String,
    /// Command and arguments (default: the image's).
    command: Vec<String>,
}

/// Phase timestamps of one run.
struct Timings {
    start: Instant,
    marks: Vec<(&'static str, Instant)>,
}

impl Timings {
    fn new() -> Self {
        Timings {
            start: Instant::now(),
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        self.marks.push((phase, Instant::now()));
    }

    fn record(
        &self,
        run_started: Option<Instant>,
        guest: Option<(bulkhead_protocol::GuestTimes, Instant)>,
        memory: Option<record::MemorySample>,
    ) -> record::RunRecord {
        record::RunRecord {
            start_ns: record::instant_ns(self.start),
            marks: self
                .marks
                .iter()
                .map(|(name, at)| (name.to_string(), record::instant_ns(*at)))
                .collect(),
            first_kvm_run_ns: run_started.map(record::instant_ns),
            guest: guest.map(|(g, _)| g),
            started_reply_ns: guest.map(|(_, at)| record::instant_ns(at)),
            memory,
            boot: None,
            template_built: false,
        }
    }

    fn report(&self) {
        let mut prev = self.start;
        for (phase, at) in &self.marks {
            eprintln!(
                "bulkhead: timing: {phase:<16} {:>9.1} ms",
                at.duration_since(prev).as_secs_f64() * 1e3
            );
            prev = *at;
        }
        eprintln!(
            "bulkhead: timing: {:<16} {:>9.1} ms",
            "total",
            prev.duration_since(self.start).as_secs_f64() * 1e3
        );
    }
}

/// Runs the container; errors of bulkhead itself exit 125, like Docker.
pub fn run(args: RunArgs) -> ExitCode {
    match run_container(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::from(125)
        }
    }
}

fn run_container(args: RunArgs) -> anyhow::Result<u8> {
    let router = signals::SignalRouter::install()?;
    let mut timings = Timings::new();

    // Everything that can be wrong with the request is checked before any
    // disk is made or VM started.
    let memory = args
        .memory
        .as_deref()
        .map(parse_size)
        .transpose()
        .context("invalid --memory")?;
    let cpu_quota = args.cpus.as_deref().map(parse_cpus).transpose()?;
    let mounts = mounts::parse_all(&args.volumes, &args.mounts)?;
    let host_dirs = host_dirs(&mounts);
    let virtiofsd = if host_dirs.is_empty() {
        None
    } else {
        Some(share::locate()?)
    };
    if let Some(h) = &args.hostname {
        if h.is_empty() || h.len() > 64 {
            bail!("invalid --hostname {h:?}");
        }
    }
    let kernel = paths::kernel()?;
    let agent = paths::agent()?;

    let store = Store::open(paths::root()).context("cannot open the image store")?;
    let reference = ImageRef::parse(&args.image)
        .with_context(|| format!("invalid image reference {:?}", args.image))?;
    let image = store
        .resolve(&reference)
        .with_context(|| format!("cannot use image {}", args.image))?;
    let process = bulkhead_rootfs::resolve_process(
        &image.config,
        &RunOverrides {
            entrypoint: args.entrypoint.clone(),
            args: args.command.clone(),
            env: args.env.clone(),
            working_dir: args.workdir.clone(),
            user: args.user.clone(),
        },
    )?;
    let user = bulkhead_rootfs::resolve_user(&image.rootfs, &process.user)
        .with_context(|| format!("unable to find user {}", process.user))?;
    let root_disk = store
        .root_disk(&image)
        .context("cannot make the image's root disk")?;
    timings.mark(record::mark::IMAGE);

    let run_dir = RunDir::create()?;
    let scratch = run_dir.path().join("scratch.ext4");
    bulkhead_rootfs::scratch_disk(&scratch, SCRATCH_MIB).context("cannot make the scratch disk")?;
    let mut disks = vec![
        DiskConfig {
            path: root_disk,
            read_only: true,
        },
        DiskConfig {
            path: scratch,
            read_only: false,
        },
    ];
    let spec_volumes = attach_mounts(&mounts, &store, &mut disks)?;
    let named_volumes = disks.len() - 2;
    let initramfs = paths::agent_initramfs(&agent)?;
    // Locals drop in reverse: the daemons outlive the VM they serve, and
    // their sockets go before the run directory.
    let mut shares = match &virtiofsd {
        Some(program) => Shares::start(program, &host_dirs, run_dir.path())?,
        None => Shares::default(),
    };
    timings.mark(record::mark::DISKS);

    let mut process_spec = ProcessSpec::new(process.args);
    process_spec.env = process.env;
    process_spec.cwd = process.cwd;
    process_spec.user = User::Id {
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids,
    };
    process_spec.terminal = args.tty;
    if args.tty {
        process_spec.console_size = tty::size().map(|(rows, cols)| TtySize { rows, cols });
    }
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| run_id(run_dir.path()));
    let spec = ContainerSpec {
        process: process_spec,
        hostname: Some(hostname),
        resources: Resources {
            memory_limit: memory,
            pids_limit: args.pids_limit,
            cpu_quota,
            cpu_period: cpu_quota.map(|_| CPU_PERIOD_US),
            ..Default::default()
        },
        storage: Storage {
            lower: Source::block_device("/dev/vda"),
            scratch: Some(Source::block_device("/dev/vdb")),
            volumes: spec_volumes,
            ..Storage::default()
        },
        ..ContainerSpec::new(ProcessSpec::new(Vec::new()))
    };
    spec.validate().context("invalid container spec")?;

    let plan = VmPlan {
        kernel,
        initramfs,
        mem_mib: memory
            .map_or(DEFAULT_VM_MIB, |m| ((m as u64) >> 20) + VM_OVERHEAD_MIB)
            .max(DEFAULT_VM_MIB),
        disks,
        shares: shares.sockets(),
        uds: run_dir.path().join("vsock.sock"),
        console_log: run_dir.path().join("console.log"),
    };
    let warm = !args.cold && fits_a_template(named_volumes, host_dirs.len());
    let (uds, console_log, guest_mib) = (plan.uds.clone(), plan.console_log.clone(), plan.mem_mib);
    let started = if warm {
        start_warm(&plan, &mut shares, &|stop| router.set_vm(stop))
    } else {
        start_cold(plan).map(|vm| (vm, Boot::Cold))
    };
    // A virtiofsd that died makes the VM fail to connect (or its guest
    // hang): its own message says why.
    let (vm, boot) = match started {
        Ok(started) => started,
        Err(e) => return Err(shares.failure_within(SHARE_GRACE).map_or(e, Into::into)),
    };
    if let Some(e) = shares.failure() {
        return Err(e.into());
    }
    let stop = vm.stop_handle();
    shares.watch(move || stop.stop());
    router.set_vm(vm.stop_handle());
    timings.mark(record::mark::VM_BUILD);

    let stream = match session::connect_agent(&uds, &vm) {
        Ok(s) => s,
        Err(e) => return Err(guest_failure(e, vm, &console_log, &mut shares)),
    };
    timings.mark(record::mark::AGENT_CONNECTED);

    let _raw = if args.tty {
        tty::RawMode::enter()
    } else {
        None
    };
    let refresh = match &boot {
        Boot::Warm { .. } => Some(Refresh::now(spec.hostname.clone())?),
        Boot::Cold => None,
    };
    let mut session = match Session::start(stream, &spec, refresh) {
        Ok(s) => s,
        Err(e) => return Err(guest_failure(e, vm, &console_log, &mut shares)),
    };
    timings.mark(record::mark::CONTAINER_STARTED);
    let writer = session.writer();
    router.set_container(writer.clone());
    if args.interactive {
        session::forward_stdin(writer);
    } else if let Ok(mut w) = writer.lock() {
        w.close_stdin()?;
    }

    let mut first_output = None;
    let status = session.pump_output(|| first_output = Some(Instant::now()));
    let status = match status {
        Ok(s) => s,
        Err(e) => return Err(guest_failure(e, vm, &console_log, &mut shares)),
    };
    timings.mark(record::mark::EXITED);
    // While the guest still holds all it touched.
    let memory = args.timings_json.as_ref().and_then(|_| {
        crate::bench::smaps::sample_vmm(None, guest_mib)
            .map_err(|e| eprintln!("bulkhead: cannot sample the VMM's memory: {e}"))
            .ok()
    });
    let guest_times = session.guest_times();
    let steps = session.steps().to_vec();
    let run_started = vm.run_started();
    // Once the agent has flushed the volumes nothing in the guest is worth
    // a clean shutdown: the host ends the VM rather than the guest's slow
    // reboot path.
    let ended = if session.shutdown() {
        vm.kill()
    } else {
        vm.finish(Duration::from_secs(10))
    };
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
    if args.timings {
        match &boot {
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
        report_steps(&steps);
    }
    if let Some(path) = &args.timings_json {
        let mut record = timings.record(run_started, guest_times, memory);
        (record.boot, record.template_built) = match &boot {
            Boot::Warm { built, .. } => (Some(record::BootKind::Warm), *built),
            Boot::Cold => (Some(record::BootKind::Cold), false),
        };
        if let Err(e) = record.write(path) {
            eprintln!("bulkhead: {e:#}");
        }
    }
    Ok(status.code().clamp(0, 255) as u8)
}

/// The host directories among `mounts`, in order: one virtiofsd each.
fn host_dirs(mounts: &[mounts::MountArg]) -> Vec<HostDir> {
    mounts
        .iter()
        .filter_map(|m| match &m.source {
            MountSource::HostDir(path) => Some(HostDir {
                path: path.clone(),
                read_only: m.read_only,
            }),
            MountSource::Volume(_) => None,
        })
        .collect()
}

/// The container's volumes for `mounts`: each named volume's disk is
/// appended to `disks` (vdc, vdd, …), each host directory is the next
/// virtio-fs tag. Outermost first, as the agent mounts them in order.
fn attach_mounts(
    mounts: &[mounts::MountArg],
    store: &Store,
    disks: &mut Vec<DiskConfig>,
) -> anyhow::Result<Vec<Volume>> {
    let mut volumes = Vec::new();
    let mut shares_given = 0;
    for m in mounts {
        let source = match &m.source {
            MountSource::Volume(name) => {
                let path = store
                    .ensure_volume(name, None)
                    .with_context(|| format!("cannot create volume {name}"))?;
                // Read-write even for `:ro`: ext4 may have to replay its
                // journal when mounted; the agent mounts it read-only for
                // the container.
                disks.push(DiskConfig {
                    path,
                    read_only: false,
                });
                Source::block_device(guest_disk(disks.len() - 1)?)
            }
            MountSource::HostDir(_) => {
                shares_given += 1;
                Source::virtiofs(share::tag(shares_given - 1))
            }
        };
        volumes.push(Volume::new(source, m.destination.clone(), m.read_only));
    }
    // A volume nested in another (a disk at /srv/cache in a share at /srv)
    // must come after it.
    volumes.sort_by_key(|v| Path::new(&v.destination).components().count());
    Ok(volumes)
}

/// Whether a template has slots for this many volumes and shares; says
/// why not when it has not.
fn fits_a_template(named_volumes: usize, shares: usize) -> bool {
    if named_volumes > MAX_WARM_VOLUMES {
        eprintln!("bulkhead: more than {MAX_WARM_VOLUMES} volumes: booting instead of restoring");
        return false;
    }
    if shares > MAX_WARM_SHARES {
        eprintln!(
            "bulkhead: more than {MAX_WARM_SHARES} host directories: booting instead of restoring"
        );
        return false;
    }
    true
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

/// What the run's VM is made of, whether it boots or is restored.
struct VmPlan {
    kernel: PathBuf,
    initramfs: PathBuf,
    mem_mib: u64,
    /// Image (read-only), scratch, volumes: vda, vdb, vdc...
    disks: Vec<DiskConfig>,
    /// The listening virtiofsd socket of each share, in tag order.
    shares: Vec<PathBuf>,
    uds: PathBuf,
    console_log: PathBuf,
}

/// How the run's VM came to be.
enum Boot {
    Cold,
    Warm { template: String, built: bool },
}

fn console_file(path: &Path) -> anyhow::Result<ConsoleOutput> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(ConsoleOutput::Writer(Box::new(file)))
}

fn vsock_config(plan: &VmPlan) -> VsockConfig {
    VsockConfig {
        cid: 3,
        uds_path: plan.uds.clone(),
    }
}

/// Boots the guest kernel with the run's disks.
fn start_cold(plan: VmPlan) -> anyhow::Result<RunningVm> {
    let mut config = VmConfig::new(&plan.kernel);
    config.initrd = Some(plan.initramfs.clone());
    config.mem_mib = plan.mem_mib;
    config.console = console_file(&plan.console_log)?;
    config.vsock = Some(vsock_config(&plan));
    config.disks = plan.disks;
    config.shares = plan
        .shares
        .into_iter()
        .enumerate()
        .map(|(i, socket)| FsConfig {
            tag: share::tag(i),
            socket: Some(socket),
        })
        .collect();
    RunningVm::start(config).context("cannot start the microVM")
}

/// Restores the template for this VM's shape (made on first use) with the
/// run's disks and shares in its slots; a template that cannot be
/// restored is made again, once.
fn start_warm(
    plan: &VmPlan,
    shares: &mut Shares,
    on_boot: template::OnBoot<'_>,
) -> anyhow::Result<(RunningVm, Boot)> {
    let spec = TemplateSpec {
        kernel: plan.kernel.clone(),
        initramfs: plan.initramfs.clone(),
        vcpus: 1,
        mem_mib: plan.mem_mib,
    };
    let mut tpl = template::ensure(&spec, on_boot)?;
    let restore = |dir: &Path| -> anyhow::Result<RunningVm> {
        Ok(RunningVm::restore(RestoreConfig {
            snapshot_dir: dir.to_path_buf(),
            console: console_file(&plan.console_log)?,
            disks: plan.disks.iter().cloned().map(Some).collect(),
            vsock: Some(vsock_config(plan)),
            shares: (0..SHARE_SLOTS)
                .map(|i| plan.shares.get(i).cloned())
                .collect(),
        })?)
    };
    let vm = match restore(&tpl.dir) {
        Ok(vm) => vm,
        Err(e) if is_template_fault(&e) => {
            tpl = template::rebuild(&spec, &tpl, &format!("{e:#}"), on_boot)?;
            // The failed restore may have connected to them.
            shares.restart()?;
            restore(&tpl.dir).context("cannot restore the rebuilt template")?
        }
        Err(e) => return Err(e.context("cannot restore the microVM")),
    };
    Ok((
        vm,
        Boot::Warm {
            template: tpl.key,
            built: tpl.built,
        },
    ))
}

/// Whether a restore failed because of the template itself (stale,
/// corrupt, from another host) rather than this run's inputs.
fn is_template_fault(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<BuildError>(),
        Some(BuildError::Snapshot(_) | BuildError::State(_))
    )
}

/// /dev/vda, /dev/vdb, ... for the n-th disk.
fn guest_disk(n: usize) -> anyhow::Result<String> {
    if n >= 26 {
        bail!("too many volumes (at most 24)");
    }
    Ok(format!("/dev/vd{}", (b'a' + n as u8) as char))
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

/// Explains a VM that died or an agent that never answered, with the end
/// of the guest console (where the kernel says why); or, if a virtiofsd
/// died, with what it said (the guest only saw its files go away).
fn guest_failure(
    e: anyhow::Error,
    vm: RunningVm,
    console_log: &Path,
    shares: &mut Shares,
) -> anyhow::Error {
    let ended = vm.finish(Duration::from_millis(500));
    if let Some(failed) = shares.failure_within(SHARE_GRACE) {
        return failed.into();
    }
    let tail = session::console_tail(console_log, 15);
    let mut msg = format!("{e:#}");
    if let Err(vm_err) = ended {
        msg.push_str(&format!(": {vm_err}"));
    }
    if !tail.trim().is_empty() {
        msg.push_str("\nguest console (last lines):\n");
        msg.push_str(&tail);
    }
    anyhow::anyhow!(msg)
}
