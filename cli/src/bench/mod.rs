//! `bulkhead bench`: microVM start-up next to plain containers and
//! Firecracker, measured the same way, reported as a table, JSON and a plot.
//!
//! Every sample is a separate process: `bulkhead run` (reporting its phases
//! with `--timings-json`), `runc`/`crun run`, or `firecracker`. Rounds are
//! interleaved (one sample of everything per round) so that load from
//! elsewhere on the host spreads over all systems alike.

mod bulkhead;
mod container;
mod firecracker;
mod phases;
mod plot;
mod programs;
mod results;
pub(crate) mod smaps;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_rootfs::{ImageRef, Store};
use bulkhead_vmm::boot::{cmdline, pvm};
use clap::Args;

use crate::paths;
use crate::run::record::MemorySample;
use container::Runtime;
use phases::{BOOT_TO_AGENT, TOTAL};
use results::{median_of, Results, System, Unit};
use workload::{Workload, WORKLOADS};

/// Guest RAM of a `bulkhead run` without a memory limit, given to
/// Firecracker too.
const GUEST_MIB: u64 = 128;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Samples per workload and system.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
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
    /// Also start K microVMs at once: time until all are ready, memory.
    #[arg(long, value_name = "K", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    concurrent: u32,
    /// Firecracker binary for the VMM baseline (default: on PATH, if any).
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
    let mut results = Results::default();
    let mut failures = 0;
    for round in 1..=args.runs {
        let tag = format!("[{round}/{}]", args.runs);
        for w in &WORKLOADS {
            match runner.cold(w) {
                Ok(s) => {
                    progress(format_args!(
                        "{tag} bulkhead-cold {}: total {:.0} ms, boot to agent ready {:.0} ms \
                         (guest clock zero {:+.0} ms after KVM_RUN)",
                        w.name, s.run.total_ms, s.run.boot_to_agent_ms, s.run.guest_clock_origin_ms
                    ));
                    for (phase, ms) in &s.run.phases {
                        results.record(System::BulkheadCold, &w.metric(phase), Unit::Ms, *ms);
                    }
                    let sys = System::BulkheadCold;
                    results.record(
                        sys,
                        &w.metric(BOOT_TO_AGENT),
                        Unit::Ms,
                        s.run.boot_to_agent_ms,
                    );
                    results.record(sys, &w.metric(TOTAL), Unit::Ms, s.run.total_ms);
                    if let Some(m) = &s.memory {
                        record_memory(&mut results, sys, Some(w), m);
                    }
                }
                Err(e) => {
                    failures += 1;
                    progress(format_args!(
                        "{tag} bulkhead-cold {}: FAILED: {e:#}",
                        w.name
                    ));
                }
            }
            for rt in &runtimes {
                failures += run_container(&mut results, rt, w, round, &tag);
            }
        }
        if let Some(fc) = &fc {
            match firecracker::boot_once(fc, &fc_spec, scratch.path()) {
                Ok(b) => {
                    progress(format_args!(
                        "{tag} firecracker: boot to agent ready {:.0} ms",
                        b.boot_to_agent_ms
                    ));
                    let sys = System::Firecracker;
                    results.record(sys, BOOT_TO_AGENT, Unit::Ms, b.boot_to_agent_ms);
                    if let Some(m) = &b.memory {
                        record_memory(&mut results, sys, None, m);
                    }
                }
                Err(e) => {
                    failures += 1;
                    progress(format_args!("{tag} firecracker: FAILED: {e:#}"));
                }
            }
        }
    }
    if args.concurrent > 0 {
        failures += run_concurrent(&mut results, &mut runner, args.concurrent);
    }

    let rows = results.rows();
    if rows.is_empty() {
        bail!("no measurement succeeded");
    }
    report(&args, &rows)?;
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
    let reference =
        ImageRef::parse(image).with_context(|| format!("invalid image reference {image:?}"))?;
    let image_data = store
        .resolve(&reference)
        .with_context(|| format!("cannot use image {image}"))?;
    store
        .root_disk(&image_data)
        .context("cannot make the image's root disk")?;
    Ok(image_data.rootfs)
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
    if ready.is_empty() {
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

fn record_memory(results: &mut Results, sys: System, w: Option<&Workload>, m: &MemorySample) {
    let metric = |what: &str| w.map_or_else(|| what.to_string(), |w| w.metric(what));
    let mib = |kib: u64| kib as f64 / 1024.0;
    results.record(
        sys,
        &metric("vmm overhead (RSS)"),
        Unit::MiB,
        mib(m.overhead_rss_kib()),
    );
    results.record(
        sys,
        &metric("vmm overhead (PSS)"),
        Unit::MiB,
        mib(m.overhead_pss_kib()),
    );
    results.record(
        sys,
        &metric("guest memory touched"),
        Unit::MiB,
        mib(m.guest_rss_kib),
    );
}

/// K microVMs at once; returns the number of failures (0 or 1).
fn run_concurrent(results: &mut Results, runner: &mut bulkhead::Runner, k: u32) -> u32 {
    progress(format_args!("concurrent: starting {k} microVMs at once"));
    match runner.concurrent(k) {
        Ok(c) => {
            progress(format_args!(
                "concurrent x{k}: all agents ready after {:.0} ms, peak PSS {:.1} MiB",
                c.all_ready_ms, c.peak_pss_mib
            ));
            let sys = System::BulkheadCold;
            let metric = |what: &str| format!("concurrent x{k}: {what}");
            results.record(sys, &metric("all agents ready"), Unit::Ms, c.all_ready_ms);
            for ms in &c.boot_to_agent_ms {
                results.record(sys, &metric(BOOT_TO_AGENT), Unit::Ms, *ms);
            }
            results.record(
                sys,
                &metric("host memory (peak PSS)"),
                Unit::MiB,
                c.peak_pss_mib,
            );
            for m in &c.memory {
                let mib = m.overhead_pss_kib() as f64 / 1024.0;
                results.record(sys, &metric("vmm overhead (PSS)"), Unit::MiB, mib);
            }
            0
        }
        Err(e) => {
            progress(format_args!("concurrent x{k}: FAILED: {e:#}"));
            1
        }
    }
}

/// `bulkhead / other` for the figures worth comparing.
fn ratios(rows: &[results::Row]) -> Vec<String> {
    let mut out = Vec::new();
    let true_w = &WORKLOADS[0];
    let ours = |what: &str| median_of(rows, System::BulkheadCold, &true_w.metric(what));
    for sys in [System::Crun, System::Runc] {
        if let (Some(a), Some(b)) = (ours(TOTAL), median_of(rows, sys, &true_w.metric(TOTAL))) {
            out.push(format!(
                "bulkhead-cold / {}, `true` start to exit: {:.0}x",
                sys.name(),
                a / b
            ));
        }
    }
    if let (Some(a), Some(b)) = (
        ours(BOOT_TO_AGENT),
        median_of(rows, System::Firecracker, BOOT_TO_AGENT),
    ) {
        out.push(format!(
            "bulkhead-cold / firecracker, process start to agent ready: {:.2}x",
            a / b
        ));
    }
    out
}

fn report(args: &BenchArgs, rows: &[results::Row]) -> anyhow::Result<()> {
    let ratio_lines = ratios(rows);
    if args.markdown {
        print!("{}", results::to_markdown(rows));
        if !ratio_lines.is_empty() {
            println!();
            for r in &ratio_lines {
                println!("- {r}");
            }
        }
    } else {
        print!("{}", results::to_text(rows));
        for r in &ratio_lines {
            println!("{r}");
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, results::to_json(rows))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let host = if pvm::host_is_pvm() { ", PVM host" } else { "" };
        let title = format!(
            "bulkhead bench: start-up, median of {} run(s){host}",
            args.runs
        );
        plot::write(path, rows, &title)?;
    }
    Ok(())
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

    #[test]
    fn ratios_compare_medians() {
        let mut r = Results::default();
        let w = &WORKLOADS[0];
        r.record(System::BulkheadCold, &w.metric(TOTAL), Unit::Ms, 3000.0);
        r.record(
            System::BulkheadCold,
            &w.metric(BOOT_TO_AGENT),
            Unit::Ms,
            2000.0,
        );
        r.record(System::Runc, &w.metric(TOTAL), Unit::Ms, 30.0);
        r.record(System::Firecracker, BOOT_TO_AGENT, Unit::Ms, 1000.0);
        let lines = ratios(&r.rows());
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("runc") && lines[0].ends_with("100x"));
        assert!(lines[1].contains("firecracker") && lines[1].ends_with("2.00x"));
    }
}
