//! `logs [-f]`: what a detached container wrote (stdout and stderr, in
//! the order it wrote them); `-f` follows until the container stops.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::lifecycle::state::monitor_alive;
use crate::lifecycle::Locked;
use crate::oci::Global;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing what the container writes until it stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub id: String,
}

pub fn logs(global: &Global, args: &LogsArgs) -> anyhow::Result<()> {
    let c = Locked::open(&global.root(), &args.id)?;
    let record = c.current()?;
    let Some(path) = record.log.clone() else {
        bail!(
            "container {} has no log: its output goes to the engine that created it",
            args.id
        );
    };
    let dir = c.dir().to_path_buf();
    // Nobody may wait on the lock while we follow.
    drop(c);
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        if !monitor_alive(&dir) {
            // One more pass: the monitor may have written before exiting.
            let _ = std::io::copy(&mut file, &mut out);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
