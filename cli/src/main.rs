//! `bulkhead`: every container in its own microVM.

mod bench;
mod boot;
mod image;
mod logger;
mod paths;
mod run;
mod share;
mod template;

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
    /// Run a command in a new container, in its own microVM.
    Run(run::RunArgs),
    /// Manage the local image store.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(image::VolumeCommand),
    /// Manage the snapshots of booted guests that `run` restores.
    #[command(subcommand)]
    Template(template::command::TemplateCommand),
    /// Boot a kernel (and initrd) in a microVM; the serial console is stdio.
    Boot(boot::BootArgs),
    /// Continue a VM from a snapshot made by `boot --snapshot-to`.
    Restore(boot::RestoreArgs),
    /// Measure microVM start-up next to plain containers and Firecracker.
    Bench(bench::BenchArgs),
}

fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Image(cmd) => report(image::run(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Volume(cmd) => report(image::run_volume(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Template(cmd) => report(template::command::run(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Boot(args) => report(boot::run(args)),
        Command::Restore(args) => report(boot::restore(args)),
        Command::Bench(args) => report(bench::run(args)),
    }
}
