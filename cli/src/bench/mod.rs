//! `bulkhead bench`: microVM start-up next to plain containers and
//! Firecracker, measured the same way, reported as a table, JSON and a plot.
//!
//! Every sample is a separate process: `bulkhead run` (warm: restoring a
//! template, or cold: `--cold`, reporting its phases with `--timings-json`),
//! `bulkhead restore` of the template alone, `runc`/`crun run`, or
//! `firecracker` (booting, and restoring its own snapshot). Rounds are
//! interleaved (one sample of everything per round) so that load from
//! elsewhere on the host spreads over all systems alike.

mod bulkhead;
mod container;
mod fc_api;
mod fc_snapshot;
mod firecracker;
mod phases;
mod plot;
mod programs;
mod report;
pub(crate) mod restore;
mod results;
mod share_io;
pub(crate) mod smaps;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use bulkhead_rootfs::Store;
use bulkhead_vmm::boot::{cmdline, pvm};
use clap::Args;

use crate::paths;
use crate::run::record::{BootKind, MemorySample};
use crate::template::{self, Template, TemplateSpec};
use container::Runtime;
use phases::{BOOT_TO_AGENT, TOTAL, TO_AGENT_CONNECTED};
use results::{Results, System, Unit};
use workload::{Workload, WORKLOADS};

/// Guest RAM of a `bulkhead run` without a memory limit (the template such
/// a run restores has it too), given to Firecracker as well.
const GUEST_MIB: u64 = 128;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Samples per workload and system.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Restores of the template alone (and of Firecracker's snapshot).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    restores: u32,
    /// Skip the cold (booting) bulkhead samples, the slow ones.
    #[arg(long)]
    no_cold: bool,
    /// Image whose root filesystem every system runs.
    #[arg(long, default_value = bulkhead_rootfs::DEFAULT_IMAGE)]
    image: String,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw the phase medians as an SVG bar chart.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print the table as Markdown.
    #[arg(long)]
    markdown: bool,
    /// Also start K restored microVMs with idle containers at once: time
    /// until all run, host memory per VM.
    #[arg(long, value_name = "K", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=128))]
    concurrent: u32,
    /// Also measure file I/O through a virtio-fs share next to an ext4
    /// disk, and a run with a share next to one without, for N rounds.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    share_io: u32,
    /// Firecracker binary for the VMM baselines, boot and snapshot restore
    /// (default: on PATH, if any).
    #[arg(long, value_name = "PATH")]
    firecracker: Option<PathBuf>,
}

/// A container runtime with a bundle per workload.
struct RuntimeBench {
    runtime: Runtime,
    bundles: Vec<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new()
        .prefix("bulkhead-bench-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let kernel = paths::kernel()?;
    let agent = paths::agent()?;
    let initrd = paths::agent_initramfs(&agent)?;
    let rootfs = prepare_image(&args.image)?;
    let template = prepare_template(&kernel, &initrd)?;

    let runtimes = prepare_runtimes(scratch.path(), &rootfs);
    let fc = firecracker::find(args.firecracker.as_deref())?;
    let fc_spec = firecracker::BootSpec {
        kernel,
        initrd,
        boot_args: boot_args(),
        mem_mib: GUEST_MIB,
    };
    match &fc {
        Some(p) => progress(format_args!("firecracker: {}", p.display())),
        None => progress(format_args!("firecracker: not found, skipped")),
    }

    let mut runner = bulkhead::Runner::new(&args.image, scratch.path())?;
    let mut boots = vec![(System::BulkheadWarm, BootKind::Warm)];
    if !args.no_cold {
        boots.push((System::BulkheadCold, BootKind::Cold));
    }
    let mut results = Results::default();
    let mut failures = 0;
    for round in 1..=args.runs {
        let tag = format!("[{round}/{}]", args.runs);
        for w in &WORKLOADS {
            for &(sys, boot) in &boots {
                failures += run_bulkhead(&mut results, &mut runner, sys, boot, w, &tag);
            }
            for rt in &runtimes {
                failures += run_container(&mut results, rt, w, round, &tag);
            }
        }
        if let Some(fc) = &fc {
            failures += run_firecracker_boot(&mut results, fc, &fc_spec, scratch.path(), &tag);
        }
    }
    if args.restores > 0 {
        let restorer = restore::Restorer::new(runner.exe(), &template.dir, scratch.path());
        failures += run_restores(&mut results, &restorer, args.restores);
        if let Some(fc) = &fc {
            failures +=
                run_firecracker_restores(&mut results, fc, &fc_spec, scratch.path(), args.restores);
        }
    }
    if args.concurrent > 0 {
        failures += run_concurrent(&mut results, &mut runner, args.concurrent);
    }
    if args.share_io > 0 {
        failures += share_io::run(
            &mut results,
            runner.exe(),
            &args.image,
            scratch.path(),
            args.share_io,
        );
    }

    let rows = results.rows();
    if rows.is_empty() {
        bail!("no measurement succeeded");
    }
    report::report(
        &report::Output {
            markdown: args.markdown,
            json: args.json.as_deref(),
            plot: args.plot.as_deref(),
            runs: args.runs,
            concurrent: args.concurrent,
        },
        &rows,
    )?;
    if failures > 0 {
        eprintln!("bulkhead: bench: {failures} sample(s) failed; see above");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("bench: {args}");
}

/// The image's unpacked root filesystem; also builds its root disk now, so
/// that no sample pays for making it.
fn prepare_image(image: &str) -> anyhow::Result<PathBuf> {
    let store = Store::open(paths::root()).context("cannot open the image store")?;
    let image_data = crate::pull::image_for(
        &store,
        image,
        crate::pull::PullPolicy::Missing,
        &Default::default(),
    )?;
    store
        .root_disk(&image_data)
        .context("cannot make the image's root disk")?;
    Ok(image_data.rootfs)
}

/// The template warm runs restore, made now if there is none, so that no
/// sample pays for making it.
fn prepare_template(kernel: &Path, initramfs: &Path) -> anyhow::Result<Template> {
    let spec = TemplateSpec {
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
        vcpus: 1,
        mem_mib: GUEST_MIB,
    };
    let began = Instant::now();
    let t =
        template::ensure(&spec, &|_| {}).context("cannot make the template warm runs restore")?;
    progress(format_args!(
        "template {}: {}",
        t.key,
        if t.built {
            format!("made in {:.1} s", began.elapsed().as_secs_f64())
        } else {
            "found".to_string()
        }
    ));
    Ok(t)
}

/// Installed runtimes that can actually run the image here (crun refuses
/// hybrid cgroup hosts, for one); each is tried once before it counts.
fn prepare_runtimes(scratch: &Path, rootfs: &Path) -> Vec<RuntimeBench> {
    let mut ready = Vec::new();
    for runtime in container::installed() {
        let name = runtime.system.name();
        let prepared = (|| -> anyhow::Result<RuntimeBench> {
            let dir = scratch.join(name);
            let bundles = WORKLOADS
                .iter()
                .map(|w| container::write_bundle(&dir, rootfs, w))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let probe_id = format!("bulkhead-bench-{}-probe", std::process::id());
            container::run_once(&runtime, &bundles[0], &probe_id, &WORKLOADS[0])?;
            Ok(RuntimeBench {
                runtime: runtime.clone(),
                bundles,
            })
        })();
        match prepared {
            Ok(r) => {
                progress(format_args!("{name}: {}", runtime.path.display()));
                ready.push(r);
            }
            Err(e) => progress(format_args!("{name}: skipped, it cannot run here: {e:#}")),
        }
    }
    if ready
        .iter()
        .all(|r| r.runtime.system == System::BulkheadOci)
    {
        progress(format_args!(
            "no usable crun or runc: no container baseline"
        ));
    }
    ready
}

/// Firecracker's boot arguments: what bulkhead's VMM gives the same kernel
/// (Firecracker adds the virtio-mmio devices itself).
fn boot_args() -> String {
    let mut line = cmdline::DEFAULT_CMDLINE.to_string();
    if pvm::PvmCompat::Auto.enabled() {
        line.push(' ');
        line.push_str(&pvm::compat_cmdline());
    }
    line
}

/// One container sample; returns the number of failures (0 or 1).
fn run_container(
    results: &mut Results,
    rt: &RuntimeBench,
    w: &Workload,
    round: u32,
    tag: &str,
) -> u32 {
    let Some(i) = WORKLOADS.iter().position(|x| x == w) else {
        return 0;
    };
    let name = rt.runtime.system.name();
    let id = format!("bulkhead-bench-{}-{}-{round}", std::process::id(), w.name);
    match container::run_once(&rt.runtime, &rt.bundles[i], &id, w) {
        Ok(ms) => {
            progress(format_args!("{tag} {name} {}: total {ms:.1} ms", w.name));
            results.record(rt.runtime.system, &w.metric(TOTAL), Unit::Ms, ms);
            0
        }
        Err(e) => {
            progress(format_args!("{tag} {name} {}: FAILED: {e:#}", w.name));
            1
        }
    }
}

/// One `bulkhead run` sample; returns the number of failures (0 or 1).
fn run_bulkhead(
    results: &mut Results,
    runner: &mut bulkhead::Runner,
    sys: System,
    boot: BootKind,
    w: &Workload,
    tag: &str,
) -> u32 {
    let name = sys.name();
    match runner.sample(w, boot) {
        Ok(s) => {
            let boot_line = s.boot_to_agent_ms.map_or(String::new(), |(ms, origin)| {
                format!(
                    ", boot to agent ready {ms:.0} ms (guest clock zero {origin:+.0} ms after KVM_RUN)"
                )
            });
            progress(format_args!(
                "{tag} {name} {}: total {:.0} ms, to agent connected {:.0} ms{boot_line}",
                w.name, s.total_ms, s.agent_connected_ms
            ));
            for (phase, ms) in &s.phases {
                results.record(sys, &w.metric(phase), Unit::Ms, *ms);
            }
            if let Some((ms, _)) = s.boot_to_agent_ms {
                results.record(sys, &w.metric(BOOT_TO_AGENT), Unit::Ms, ms);
            }
            let connected = &w.metric(TO_AGENT_CONNECTED);
            results.record(sys, connected, Unit::Ms, s.agent_connected_ms);
            results.record(sys, &w.metric(TOTAL), Unit::Ms, s.total_ms);
            if let Some(m) = &s.memory {
                // A restored guest's RAM is the template's file, mapped
                // copy-on-write: its pages shared with the page cache make
                // PSS minus guest RSS meaningless (the concurrent
                // measurement reports private memory instead).
                record_memory(results, sys, Some(w), m, boot == BootKind::Cold);
            }
            0
        }
        Err(e) => {
            progress(format_args!("{tag} {name} {}: FAILED: {e:#}", w.name));
            1
        }
    }
}

fn record_memory(
    results: &mut Results,
    sys: System,
    w: Option<&Workload>,
    m: &MemorySample,
    with_pss: bool,
) {
    let metric = |what: &str| w.map_or_else(|| what.to_string(), |w| w.metric(what));
    let mib = |kib: u64| kib as f64 / 1024.0;
    results.record(
        sys,
        &metric("vmm overhead (RSS)"),
        Unit::MiB,
        mib(m.overhead_rss_kib()),
    );
    if with_pss {
        results.record(
            sys,
            &metric("vmm overhead (PSS)"),
            Unit::MiB,
            mib(m.overhead_pss_kib()),
        );
    }
    results.record(
        sys,
        &metric("guest memory touched"),
        Unit::MiB,
        mib(m.guest_rss_kib),
    );
}

/// One Firecracker boot; returns the number of failures (0 or 1).
fn run_firecracker_boot(
    results: &mut Results,
    fc: &Path,
    spec: &firecracker::BootSpec,
    dir: &Path,
    tag: &str,
) -> u32 {
    match firecracker::boot_once(fc, spec, dir) {
        Ok(b) => {
            progress(format_args!(
                "{tag} firecracker: boot to agent ready {:.0} ms",
                b.boot_to_agent_ms
            ));
            let sys = System::Firecracker;
            results.record(sys, BOOT_TO_AGENT, Unit::Ms, b.boot_to_agent_ms);
            if let Some(m) = &b.memory {
                record_memory(results, sys, None, m, true);
            }
            0
        }
        Err(e) => {
            progress(format_args!("{tag} firecracker: FAILED: {e:#}"));
            1
        }
    }
}

/// `n` restores of the template alone; returns the number of failures.
fn run_restores(results: &mut Results, restorer: &restore::Restorer, n: u32) -> u32 {
    let mut failures = 0;
    for i in 1..=n {
        match restorer.once() {
            Ok(t) => {
                progress(format_args!(
                    "[{i}/{n}] bulkhead-warm restore alone: {:.1} ms",
                    t.total_ms
                ));
                for (phase, ms) in &t.phases {
                    let metric = format!("restore alone: {phase}");
                    results.record(System::BulkheadWarm, &metric, Unit::Ms, *ms);
                }
                results.record(System::BulkheadWarm, restore::TOTAL, Unit::Ms, t.total_ms);
            }
            Err(e) => {
                failures += 1;
                progress(format_args!("[{i}/{n}] restore alone: FAILED: {e:#}"));
            }
        }
    }
    failures
}

/// Firecracker snapshots the booted guest once, then restores it `n`
/// times; returns the number of failures.
fn run_firecracker_restores(
    results: &mut Results,
    fc: &Path,
    spec: &firecracker::BootSpec,
    dir: &Path,
    n: u32,
) -> u32 {
    progress(format_args!("firecracker: booting to snapshot the guest"));
    let snap = match fc_snapshot::create(fc, spec, dir) {
        Ok(s) => s,
        Err(e) => {
            progress(format_args!("firecracker snapshot: FAILED: {e:#}"));
            return 1;
        }
    };
    let mut failures = 0;
    for i in 1..=n {
        match fc_snapshot::load_once(fc, &snap, dir) {
            Ok(l) => {
                progress(format_args!(
                    "[{i}/{n}] firecracker snapshot restore: {:.1} ms",
                    l.ms
                ));
                results.record(System::Firecracker, report::FC_RESTORE, Unit::Ms, l.ms);
                if let Some(m) = l.memory {
                    let mib = m.private as f64 / 1024.0;
                    results.record(
                        System::Firecracker,
                        report::FC_RESTORE_PRIVATE,
                        Unit::MiB,
                        mib,
                    );
                }
            }
            Err(e) => {
                failures += 1;
                progress(format_args!(
                    "[{i}/{n}] firecracker snapshot restore: FAILED: {e:#}"
                ));
            }
        }
    }
    let _ = std::fs::remove_file(&snap.state);
    let _ = std::fs::remove_file(&snap.memory);
    failures
}

/// K restored microVMs at once; returns the number of failures (0 or 1).
fn run_concurrent(results: &mut Results, runner: &mut bulkhead::Runner, k: u32) -> u32 {
    progress(format_args!(
        "concurrent: starting {k} restored microVMs with idle containers at once"
    ));
    match runner.concurrent_idle(k) {
        Ok(c) => {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let total_pss: u64 = c.memory.iter().map(|m| m.pss).sum();
            let total_private: u64 = c.memory.iter().map(|m| m.private).sum();
            progress(format_args!(
                "concurrent x{k}: all running after {:.0} ms, total PSS {:.1} MiB, \
                 total private {:.1} MiB",
                c.all_running_ms,
                mib(total_pss),
                mib(total_private)
            ));
            let sys = System::BulkheadWarm;
            let metric = |what: &str| report::concurrent_metric(k, what);
            results.record(
                sys,
                &metric(report::ALL_RUNNING),
                Unit::Ms,
                c.all_running_ms,
            );
            for m in &c.memory {
                results.record(
                    sys,
                    &metric(report::PRIVATE_PER_VM),
                    Unit::MiB,
                    mib(m.private),
                );
                results.record(sys, &metric("PSS per VM"), Unit::MiB, mib(m.pss));
            }
            results.record(sys, &metric("total PSS"), Unit::MiB, mib(total_pss));
            results.record(sys, &metric("total private"), Unit::MiB, mib(total_private));
            0
        }
        Err(e) => {
            progress(format_args!("concurrent x{k}: FAILED: {e:#}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_args_start_with_the_vmm_defaults() {
        let line = boot_args();
        assert!(line.starts_with(cmdline::DEFAULT_CMDLINE));
        assert_eq!(line.contains("noxsave"), pvm::host_is_pvm());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn flags_parse() {
        use clap::Parser;
        let a = Cli::try_parse_from(["b"]).unwrap().bench;
        assert!(!a.no_cold);
        assert_eq!((a.runs, a.restores, a.concurrent), (5, 10, 0));
        let a = Cli::try_parse_from(["b", "--no-cold", "--restores", "0", "--concurrent", "10"])
            .unwrap()
            .bench;
        assert!(a.no_cold);
        assert_eq!((a.restores, a.concurrent), (0, 10));
        assert!(Cli::try_parse_from(["b", "--concurrent", "500"]).is_err());
    }
}
