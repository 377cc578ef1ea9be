//! `rm [-f]`: stopped containers removed; `-f` kills running ones first.

use clap::Args;

use crate::lifecycle::{self, Locked};
use crate::oci::Global;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Kill the container first if it runs.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn rm(global: &Global, args: &RmArgs) -> anyhow::Result<()> {
    let root = global.root();
    let mut failed = None;
    for id in &args.ids {
        let result = Locked::open(&root, id).map_err(Into::into).and_then(|c| {
            lifecycle::delete(c, args.force).map_err(|e| {
                if args.force {
                    e
                } else {
                    e.context("stop it first or use rm -f")
                }
            })
        });
        match result {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("bulkhead: {e:#}");
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e.context("not every container was removed")),
        None => Ok(()),
    }
}
