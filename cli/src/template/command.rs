//! `bulkhead template`: list, remove and pre-build templates.

use clap::Subcommand;

use super::TemplateSpec;
use crate::lifecycle::signals::SignalRouter;
use crate::paths;

#[derive(Subcommand, Debug)]
pub enum TemplateCommand {
    /// List templates.
    Ls,
    /// Remove templates by key (a unique prefix will do), or all of them.
    Rm {
        keys: Vec<String>,
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
    /// Make the template `bulkhead run` will restore, ahead of the first run.
    Build {
        /// Guest memory in MiB (what a run with `-m` would use: limit + 64,
        /// at least 128).
        #[arg(long, default_value_t = 128)]
        mem_mib: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
    },
}

pub fn run(cmd: TemplateCommand) -> anyhow::Result<()> {
    match cmd {
        TemplateCommand::Ls => {
            println!(
                "{:<16}  {:>5}  {:>7}  {:>8}  CREATED",
                "KEY", "VCPUS", "MEM MIB", "BOOT S"
            );
            for t in super::list()? {
                println!(
                    "{:<16}  {:>5}  {:>7}  {:>8.1}  {}",
                    t.key,
                    t.vcpus,
                    t.mem_mib,
                    t.boot_ms as f64 / 1e3,
                    t.created_unix
                );
            }
            Ok(())
        }
        TemplateCommand::Rm { keys, all } => {
            let keys = if all {
                super::list()?.into_iter().map(|t| t.key).collect()
            } else {
                keys
            };
            for key in keys {
                println!("{}", super::remove(&key)?);
            }
            Ok(())
        }
        TemplateCommand::Build { mem_mib, vcpus } => {
            // Ctrl-C ends the template VM, and the build cleans up after it.
            let router = SignalRouter::install()?;
            let spec = TemplateSpec {
                kernel: paths::kernel()?,
                initramfs: paths::agent_initramfs(&paths::agent()?)?,
                vcpus,
                mem_mib,
            };
            let t = super::ensure(&spec, &|stop| router.set_vm(stop))?;
            println!("{}", t.key);
            if !t.built {
                eprintln!("bulkhead: template {} exists already", t.key);
            }
            Ok(())
        }
    }
}
