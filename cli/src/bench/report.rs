//! The bench's output: the table (plain or Markdown), the ratios worth
//! comparing beneath it, JSON and the plot.

use std::path::Path;

use anyhow::Context;
use bulkhead_vmm::boot::pvm;

use super::phases::{BOOT_TO_AGENT, TOTAL};
use super::results::{self, median_of, Row, System};
use super::{plot, restore};
use crate::bench::workload::WORKLOADS;

/// Firecracker's snapshot restore, process start to the load response.
pub const FC_RESTORE: &str = "snapshot restore: process start to load response";
pub const FC_RESTORE_PRIVATE: &str = "snapshot restore: private memory after load";
/// Concurrent figures, under [`concurrent_metric`].
pub const ALL_RUNNING: &str = "all containers running";
pub const PRIVATE_PER_VM: &str = "private memory per VM";

/// What the target is stated for.
const TARGET_VMS: u32 = 100;
const TARGET_PRIVATE_MIB: f64 = 10.0;

pub fn concurrent_metric(k: u32, what: &str) -> String {
    format!("concurrent x{k}: {what}")
}

/// Where and how to report.
pub struct Output<'a> {
    pub markdown: bool,
    pub json: Option<&'a Path>,
    pub plot: Option<&'a Path>,
    pub runs: u32,
    pub concurrent: u32,
}

/// `a / b` as a line, when both medians are there.
fn ratio(
    rows: &[Row],
    (sys_a, metric_a): (System, &str),
    (sys_b, metric_b): (System, &str),
    what: &str,
) -> Option<String> {
    let a = median_of(rows, sys_a, metric_a)?;
    let b = median_of(rows, sys_b, metric_b)?;
    let x = a / b;
    let x = if x >= 10.0 {
        format!("{x:.0}x")
    } else {
        format!("{x:.2}x")
    };
    Some(format!(
        "{} / {}, {what}: {x} ({} vs {})",
        sys_a.name(),
        sys_b.name(),
        ms(a),
        ms(b)
    ))
}

fn ms(v: f64) -> String {
    if v < 100.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

/// The comparisons worth a line each, for whatever was measured.
pub fn ratios(rows: &[Row], concurrent: u32) -> Vec<String> {
    let true_total = WORKLOADS[0].metric(TOTAL);
    let start_to_exit = "`true` start to exit";
    let mut out = Vec::new();
    for ours in [
        System::BulkheadWarm,
        System::BulkheadCold,
        System::BulkheadOci,
    ] {
        for theirs in [System::Crun, System::Runc] {
            out.extend(ratio(
                rows,
                (ours, &true_total),
                (theirs, &true_total),
                start_to_exit,
            ));
        }
    }
    out.extend(ratio(
        rows,
        (System::BulkheadCold, &true_total),
        (System::BulkheadWarm, &true_total),
        start_to_exit,
    ));
    out.extend(ratio(
        rows,
        (System::BulkheadWarm, restore::TOTAL),
        (System::Firecracker, FC_RESTORE),
        "restore alone vs Firecracker's snapshot restore",
    ));
    out.extend(ratio(
        rows,
        (System::BulkheadCold, &WORKLOADS[0].metric(BOOT_TO_AGENT)),
        (System::Firecracker, BOOT_TO_AGENT),
        "process start to agent ready",
    ));
    if concurrent > 0 {
        let metric = concurrent_metric(concurrent, PRIVATE_PER_VM);
        if let Some(r) = rows
            .iter()
            .find(|r| r.system == System::BulkheadWarm && r.metric == metric)
        {
            let verdict = if r.max <= TARGET_PRIVATE_MIB {
                "within"
            } else {
                "over"
            };
            out.push(format!(
                "{TARGET_VMS} idle restored VMs, extrapolated from {concurrent}: \
                 ~{:.0} MiB private in all ({:.1} MiB median, {:.1} MiB max per VM: {verdict} \
                 the {TARGET_PRIVATE_MIB:.0} MiB target), plus the template's pages in the \
                 page cache once",
                r.median * TARGET_VMS as f64,
                r.median,
                r.max
            ));
        }
    }
    out
}

pub fn report(out: &Output<'_>, rows: &[Row]) -> anyhow::Result<()> {
    let ratio_lines = ratios(rows, out.concurrent);
    if out.markdown {
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
    if let Some(path) = out.json {
        std::fs::write(path, results::to_json(rows))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = out.plot {
        let host = if pvm::host_is_pvm() { ", PVM host" } else { "" };
        let title = format!(
            "bulkhead bench: start-up, median of {} run(s){host}",
            out.runs
        );
        plot::write(path, rows, &title)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Results, Unit};

    #[test]
    fn ratios_compare_medians() {
        let mut r = Results::default();
        let w = &WORKLOADS[0];
        r.record(System::BulkheadCold, &w.metric(TOTAL), Unit::Ms, 3000.0);
        r.record(System::BulkheadWarm, &w.metric(TOTAL), Unit::Ms, 600.0);
        r.record(
            System::BulkheadCold,
            &w.metric(BOOT_TO_AGENT),
            Unit::Ms,
            2000.0,
        );
        r.record(System::Runc, &w.metric(TOTAL), Unit::Ms, 30.0);
        r.record(System::Firecracker, BOOT_TO_AGENT, Unit::Ms, 1000.0);
        r.record(System::BulkheadWarm, restore::TOTAL, Unit::Ms, 12.0);
        r.record(System::Firecracker, FC_RESTORE, Unit::Ms, 8.0);
        let lines = ratios(&r.rows(), 0);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines[0].starts_with("bulkhead-warm / runc") && lines[0].contains(": 20x"));
        assert!(lines[1].starts_with("bulkhead-cold / runc") && lines[1].contains(": 100x"));
        assert!(
            lines[2].starts_with("bulkhead-cold / bulkhead-warm") && lines[2].contains("5.00x")
        );
        assert!(
            lines[3].contains("snapshot restore") && lines[3].contains("1.50x (12.0 ms vs 8.0 ms)")
        );
        assert!(lines[4].contains("firecracker") && lines[4].contains("2.00x"));
    }

    #[test]
    fn concurrent_memory_is_extrapolated_to_the_target() {
        let mut r = Results::default();
        let metric = concurrent_metric(4, PRIVATE_PER_VM);
        for v in [6.0, 7.0, 8.0, 12.0] {
            r.record(System::BulkheadWarm, &metric, Unit::MiB, v);
        }
        let lines = ratios(&r.rows(), 4);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("100 idle restored VMs, extrapolated from 4: ~750 MiB"));
        assert!(lines[0].contains("12.0 MiB max per VM: over"));
        assert!(ratios(&r.rows(), 0).is_empty());
    }
}
