//! `bulkhead`: every container in its own microVM.

mod boot;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Run containers in their own KVM microVMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (and initrd) in a microVM; the serial console is stdio.
    Boot(boot::BootArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Boot(args) => boot::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::from(1)
        }
    }
}
