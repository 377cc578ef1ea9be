//! `bulkhead gc`: gives back what bulkhead processes that died (even by
//! SIGKILL) still hold on the host: run directories, unfinished template
//! builds, empty host cgroups of VMs, network leases. Each part is also swept implicitly by
//! the next command that needs it: run directories by the next run, a
//! template's dead builds by its next build, network leases by the next
//! lease.

use anyhow::Context;

use crate::lifecycle::{host_cgroup, run_dir};
use crate::template;

pub fn run() -> anyhow::Result<()> {
    let runs = run_dir::sweep_dead();
    if runs > 0 {
        println!(
            "removed {runs} run director{}",
            if runs == 1 { "y" } else { "ies" }
        );
    }
    let builds = template::sweep_dead_builds();
    if builds > 0 {
        println!(
            "removed {builds} unfinished template build{}",
            if builds == 1 { "" } else { "s" }
        );
    }
    let cgroups = host_cgroup::sweep_dead();
    if cgroups > 0 {
        println!(
            "removed {cgroups} host cgroup{}",
            if cgroups == 1 { "" } else { "s" }
        );
    }
    crate::network::gc().context("cannot sweep the networks")
}
