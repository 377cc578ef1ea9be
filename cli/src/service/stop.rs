//! `stop [-t SECS]`: SIGTERM to the container, SIGKILL after the grace
//! time, then wait until it is gone; as `docker stop`.

use std::time::Duration;

use clap::Args;

use crate::lifecycle::delete::wait_gone;
use crate::lifecycle::{self, Locked, Status};
use crate::oci::Global;

#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn stop(global: &Global, args: &StopArgs) -> anyhow::Result<()> {
    let root = global.root();
    for id in &args.ids {
        let c = Locked::open(&root, id)?;
        let record = c.current()?;
        if record.status != Status::Stopped {
            lifecycle::kill(&c, libc::SIGTERM, false)?;
            if !wait_gone(&c, Duration::from_secs(args.time)) {
                lifecycle::kill(&c, libc::SIGKILL, false)?;
                wait_gone(&c, Duration::from_secs(30));
            }
        }
        // Its monitor could not remove it while we held it.
        if record.auto_remove {
            lifecycle::delete(c, true)?;
        }
        println!("{id}");
    }
    Ok(())
}
