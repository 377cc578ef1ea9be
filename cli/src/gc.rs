//! `bulkhead gc`: gives back what bulkhead processes that died (even by
//! SIGKILL) still hold on the host: run directories, unfinished template
//! builds, empty host cgroups of VMs, network leases. Each part is also
//! swept implicitly by the next command that needs it: run directories by
//! the next run, a template's dead builds by its next build, network
//! leases by the next lease.

use anyhow::Context;

use crate::lifecycle::{host_cgroup, run_dir};
use crate::template;

pub fn run() -> anyhow::Result<()> {
    removed(run_dir::sweep_dead(), "run directory", "run directories");
    removed(
        template::sweep_dead_builds(),
        "unfinished template build",
        "unfinished template builds",
    );
    removed(host_cgroup::sweep_dead(), "host cgroup", "host cgroups");
    crate::network::gc().context("cannot sweep the networks")
}

fn removed(n: usize, one: &str, many: &str) {
    if n > 0 {
        println!("removed {n} {}", if n == 1 { one } else { many });
    }
}
