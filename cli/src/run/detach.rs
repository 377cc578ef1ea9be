//! `bulkhead run -d`: the container is created with a monitor of its own
//! holding the VM, started, and left running; its output goes to its log
//! (`bulkhead logs`). Prints the id, as `docker run -d` does.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};

use super::image_plan::{self, Request};
use super::timings::Timings;
use super::RunArgs;
use crate::lifecycle::monitor::MonitorStdio;
use crate::lifecycle::state::OUTPUT_LOG;
use crate::lifecycle::{self, Record, Root};

pub fn run(args: &RunArgs, root: &Root) -> anyhow::Result<u8> {
    if args.tty {
        bail!("-t with -d needs `attach`, which bulkhead does not have: use `bulkhead exec -it` on the running container");
    }
    let request = Request::check(args)?;
    let id = match &args.name {
        Some(name) => name.clone(),
        None => random_id()?,
    };
    let log = root.path().join(&id).join(OUTPUT_LOG);
    let (c, _) = lifecycle::create_detached(root, &id, |dir| {
        let plan = image_plan::plan(args, &request, dir, &id, &mut Timings::new())?;
        let mut record = Record::new(&id, PathBuf::new());
        record.image = Some(args.image.clone());
        record.command = plan.spec.process.args.clone();
        record.log = Some(log.clone());
        record.auto_remove = args.rm;
        Ok((plan, record, MonitorStdio::Log(log.clone())))
    })?;
    if let Err(e) = lifecycle::start(&c) {
        let _ = lifecycle::delete(c, true);
        return Err(e);
    }
    println!("{id}");
    Ok(0)
}

/// 12 random hex digits, as Docker abbreviates its ids.
fn random_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
