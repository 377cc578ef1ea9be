//! `bulkhead`: every container in its own microVM.

mod bench;
mod boot;
mod confine;
mod gc;
mod image;
mod jail;
mod lifecycle;
mod logger;
mod network;
mod oci;
mod paths;
mod pull;
mod run;
mod service;
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
    #[command(flatten)]
    global: oci::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container, in its own microVM.
    Run(Box<run::RunArgs>),
    /// Pull an image from a registry into the local store.
    Pull(pull::PullArgs),
    /// Check and keep credentials for a registry.
    Login(pull::LoginArgs),
    /// Forget the credentials kept for a registry.
    Logout(pull::LogoutArgs),
    /// Manage the local image store.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(image::VolumeCommand),
    /// Manage the networks containers join.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Give back what containers of dead bulkhead processes still hold.
    Gc,
    /// Manage the snapshots of booted guests that `run` restores.
    #[command(subcommand)]
    Template(template::command::TemplateCommand),
    /// Boot a kernel (and initrd) in a microVM; the serial console is stdio.
    Boot(boot::BootArgs),
    /// Continue a VM from a snapshot made by `boot --snapshot-to`.
    Restore(boot::RestoreArgs),
    /// Measure microVM start-up next to plain containers and Firecracker.
    Bench(bench::BenchArgs),

    // The runc-compatible commands (OCI runtime CLI).
    /// Create a container from an OCI bundle (its VM up, process not run).
    Create(oci::CreateArgs),
    /// Run the created container's process.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal to a container (default SIGTERM).
    Kill(oci::KillArgs),
    /// Remove a stopped container (or, with --force, any).
    Delete(oci::DeleteArgs),
    /// Run a process in a running container.
    Exec(oci::ExecArgs),
    /// List containers (runc's form; see also `ps`).
    List(oci::ListArgs),
    /// Freeze a container's processes.
    Pause(oci::PauseArgs),
    /// Thaw a paused container.
    Resume(oci::PauseArgs),
    /// Write a starting config.json into a bundle.
    Spec {
        #[arg(short = 'b', long)]
        bundle: Option<std::path::PathBuf>,
        /// Accepted; bulkhead's containers are never rootless on the host.
        #[arg(long)]
        rootless: bool,
    },
    /// Print the runtime's features as JSON.
    Features,
    /// runc's `run` (create + start + wait): `run --bundle DIR ID`.
    #[command(name = "oci-run", hide = true)]
    OciRun(oci::RunBundleArgs),
    /// Hold a container's VM for its life (started by `create`).
    #[command(hide = true)]
    Monitor { id: String },
    /// A container's VMM in its jail (started by the container's process).
    #[command(name = "jailed-vmm", hide = true)]
    JailedVmm,

    // The Docker-like commands on containers `run -d` started.
    /// List containers (`-a`: also stopped); with an id, its processes.
    Ps(service::PsArgs),
    /// Print a detached container's output.
    Logs(service::LogsArgs),
    /// SIGTERM, then SIGKILL after -t seconds.
    Stop(service::StopArgs),
    /// Remove containers (-f: even running ones).
    Rm(service::RmArgs),
    /// Print what bulkhead knows of containers, as JSON.
    Inspect {
        #[arg(required = true)]
        ids: Vec<String>,
    },
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

/// `run --bundle DIR ID` is runc's `run`; every other `run` is Docker's.
fn argv() -> Vec<String> {
    let mut argv: Vec<String> = std::env::args().collect();
    let takes_value = ["--root", "--log", "--log-format"];
    let mut i = 1;
    while i < argv.len() && argv[i].starts_with('-') {
        i += if takes_value.contains(&argv[i].as_str()) {
            2
        } else {
            1
        };
    }
    if argv.get(i).map(String::as_str) == Some("run")
        && argv[i + 1..]
            .iter()
            .any(|a| a == "-b" || a == "--bundle" || a.starts_with("--bundle="))
    {
        argv[i] = "oci-run".into();
    }
    argv
}

fn main() -> ExitCode {
    logger::init();
    let cli = Cli::parse_from(argv());
    let g = &cli.global;
    confine::set_seccomp(g.seccomp);
    confine::set_jail(g.jail);
    if g.debug && g.systemd_cgroup {
        eprintln!("bulkhead: --systemd-cgroup ignored: the container's cgroup is in its guest");
    }
    let oci = |result: anyhow::Result<()>| match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => g.fail(&e),
    };
    let oci_code = |result: anyhow::Result<ExitCode>| match result {
        Ok(code) => code,
        Err(e) => g.fail(&e),
    };
    match cli.command {
        Command::Create(args) => oci(oci::create(g, &args)),
        Command::Start { id } => oci(oci::start(g, &id)),
        Command::State { id } => oci(oci::state(g, &id)),
        Command::Kill(args) => oci(oci::kill(g, &args)),
        Command::Delete(args) => oci(oci::delete(g, &args)),
        Command::Exec(args) => oci_code(oci::exec(g, &args)),
        Command::List(args) => oci(oci::list(g, &args)),
        Command::Pause(args) => oci(oci::pause(g, &args.id, true)),
        Command::Resume(args) => oci(oci::pause(g, &args.id, false)),
        Command::Spec { bundle, .. } => oci(oci::spec(bundle.as_deref())),
        Command::Features => oci(oci::features()),
        Command::OciRun(args) => oci_code(oci::run_bundle(g, &args)),
        Command::JailedVmm => jail::inside::main(),
        Command::Monitor { id } => lifecycle::monitor::main(&g.root(), &id),
        Command::Ps(args) => oci(service::ps(g, &args)),
        Command::Logs(args) => oci(service::logs(g, &args)),
        Command::Stop(args) => oci(service::stop(g, &args)),
        Command::Rm(args) => oci(service::rm(g, &args)),
        Command::Inspect { ids } => oci(service::inspect(g, &ids)),
        Command::Run(args) => run::run(*args, g.root()),
        Command::Pull(args) => pull::pull(args),
        Command::Login(args) => pull::login(args),
        Command::Logout(args) => pull::logout(args),
        Command::Image(cmd) => report(image::run(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Volume(cmd) => report(image::run_volume(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Network(cmd) => report(network::run(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Gc => report(gc::run().map(|_| ExitCode::SUCCESS)),
        Command::Template(cmd) => report(template::command::run(cmd).map(|_| ExitCode::SUCCESS)),
        Command::Boot(args) => report(boot::run(args)),
        Command::Restore(args) => report(boot::restore(args)),
        Command::Bench(args) => report(bench::run(args)),
    }
}
