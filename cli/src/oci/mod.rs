//! The runc-compatible command line: what podman (through conmon),
//! containerd's runc shim and dockerd run as their OCI runtime. Each
//! command is a thin layer over the lifecycle library; the bundle's
//! config.json becomes a plan in `bundle`, and `--console-socket` is
//! `console`'s.

mod bundle;
mod console;
mod features;
mod seccomp;
pub mod signal;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_protocol::{ProcessSpec, User};
use clap::{Args, ValueEnum};

use crate::lifecycle::hooks;
use crate::lifecycle::monitor::{self, MonitorStdio};
use crate::lifecycle::state::{self, Locked};
use crate::lifecycle::{self, Exit, Plan, Root, Status};

/// Global flags, as runc has them.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Where container state lives (default /run/bulkhead).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also write errors to this file (engines read it).
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More diagnostics on stderr.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility and ignored: a container's cgroup is
    /// in its own guest kernel, the host sees only the VM's process.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// seccomp filters on the VMM's threads; `off` is for debugging only.
    #[arg(long, global = true, value_enum, default_value_t = crate::confine::SeccompMode::On)]
    pub seccomp: crate::confine::SeccompMode,
    /// Each VMM in a jail of its own; `off` is for debugging only.
    #[arg(long, global = true, value_enum, default_value_t = crate::confine::JailMode::On)]
    pub jail: crate::confine::JailMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Global {
    pub fn root(&self) -> Root {
        Root::new(self.root.clone())
    }

    /// Reports a failed command as runc does (stderr, and the log file in
    /// the chosen format) and gives its exit status.
    pub fn fail(&self, e: &anyhow::Error) -> ExitCode {
        let message = format!("{e:#}");
        eprintln!("bulkhead: {message}");
        if let Some(path) = &self.log {
            let line = match self.log_format {
                LogFormat::Text => format!("bulkhead: {message}\n"),
                LogFormat::Json => format!(
                    "{}\n",
                    serde_json::json!({
                        "level": "error",
                        "msg": message,
                        "time": state::rfc3339_now(),
                    })
                ),
            };
            if let Ok(mut f) = std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(line.as_bytes());
            }
        }
        ExitCode::from(1)
    }
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The bundle (holding config.json); default: the working directory.
    #[arg(short = 'b', long)]
    pub bundle: Option<PathBuf>,
    /// Write the pid of the process that lives as long as the container's.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Send the pty master of a terminal container to this Unix socket.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Pass this many extra descriptors (from 3) to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Accepted: there is no pivot_root to skip on the host.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted: there is no host keyring to share.
    #[arg(long)]
    pub no_new_keyring: bool,
    pub id: String,
}

/// `create`: the container's VM up and the container built in it, held by
/// its monitor (whose pid goes into `--pid-file`).
pub fn create(global: &Global, args: &CreateArgs) -> anyhow::Result<()> {
    if args.preserve_fds > 0 {
        bail!(
            "--preserve-fds {}: host descriptors cannot cross into a microVM",
            args.preserve_fds
        );
    }
    let root = global.root();
    let bundle = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let (c, record) = lifecycle::create_detached(&root, &args.id, |_| {
        let (plan, record) = bundle::load(&bundle, &args.id)?;
        let stdio = terminal_stdio(&plan, args.console_socket.as_deref())?;
        Ok((plan, record, stdio))
    })?;
    after_create(&c, &record, args.pid_file.as_deref())
}

fn terminal_stdio(plan: &Plan, console_socket: Option<&Path>) -> anyhow::Result<MonitorStdio> {
    match (plan.spec.process.terminal, console_socket) {
        (true, Some(socket)) => Ok(MonitorStdio::Terminal(console::send_master(socket)?)),
        (true, None) => bail!("process.terminal is set but no --console-socket was given"),
        (false, Some(_)) => bail!("--console-socket given but process.terminal is not set"),
        (false, None) => Ok(MonitorStdio::Inherit),
    }
}

/// The hooks of a created container, then its pid file.
fn after_create(
    c: &Locked,
    record: &lifecycle::Record,
    pid_file: Option<&Path>,
) -> anyhow::Result<()> {
    let hooks_ran = (|| -> anyhow::Result<()> {
        if let Some(h) = &record.hooks {
            for (kind, list) in [
                ("createRuntime", h.create_runtime()),
                ("prestart", h.prestart()),
            ] {
                if let Some(list) = list {
                    hooks::run_all(kind, list, record)?;
                }
            }
        }
        if let (Some(path), Some(pid)) = (pid_file, record.pid) {
            write_pid_file(path, pid)?;
        }
        Ok(())
    })();
    if let Err(e) = hooks_ran {
        lifecycle::delete::end_monitor(c, record);
        return Err(e);
    }
    Ok(())
}

/// Written whole or not at all: engines read it as soon as we exit.
pub fn write_pid_file(path: &Path, pid: i32) -> anyhow::Result<()> {
    state::write_atomically(path, pid.to_string().as_bytes())
        .with_context(|| format!("cannot write the pid file {}", path.display()))
}

/// `start`: the created container's process runs; poststart hooks follow.
pub fn start(global: &Global, id: &str) -> anyhow::Result<()> {
    let c = Locked::open(&global.root(), id)?;
    let record = lifecycle::start(&c)?;
    if let Some(list) = record.hooks.as_ref().and_then(|h| h.poststart().clone()) {
        if let Err(e) = hooks::run_all("poststart", &list, &record) {
            eprintln!("bulkhead: {e:#}");
        }
    }
    Ok(())
}

/// `state`: the OCI state JSON.
pub fn state(global: &Global, id: &str) -> anyhow::Result<()> {
    let c = Locked::open(&global.root(), id)?;
    let record = c.current()?;
    println!("{}", serde_json::to_string_pretty(&record.oci_state())?);
    Ok(())
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal every process in the container, not only its main one.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// The signal (Docker's form); or give it after the id (runc's).
    #[arg(short = 's', long = "signal")]
    pub signal_flag: Option<String>,
    pub id: String,
    /// Name (TERM, SIGTERM) or number; default SIGTERM, as runc.
    pub signal: Option<String>,
}

pub fn kill(global: &Global, args: &KillArgs) -> anyhow::Result<()> {
    let sig = match args.signal.as_deref().or(args.signal_flag.as_deref()) {
        Some(s) => signal::parse(s)?,
        None => libc::SIGTERM,
    };
    let c = Locked::open(&global.root(), &args.id)?;
    lifecycle::kill(&c, sig, args.all)
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kill a running container first.
    #[arg(short = 'f', long)]
    pub force: bool,
    pub id: String,
}

pub fn delete(global: &Global, args: &DeleteArgs) -> anyhow::Result<()> {
    let c = match Locked::open(&global.root(), &args.id) {
        // As runc: deleting what is already gone is fine with --force.
        Err(state::StateError::NotFound(_)) if args.force => return Ok(()),
        other => other?,
    };
    lifecycle::delete(c, args.force)
}

#[derive(Args, Debug)]
pub struct PauseArgs {
    pub id: String,
}

pub fn pause(global: &Global, id: &str, frozen: bool) -> anyhow::Result<()> {
    let c = Locked::open(&global.root(), id)?;
    if frozen {
        lifecycle::pause(&c)
    } else {
        lifecycle::resume(&c)
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(short = 'f', long, default_value = "table")]
    pub format: String,
    /// Only the ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `list`: every container in the root, as runc lists them.
pub fn list(global: &Global, args: &ListArgs) -> anyhow::Result<()> {
    let root = global.root();
    let mut records = Vec::new();
    for id in root.ids() {
        if let Ok(c) = Locked::open(&root, &id) {
            if let Ok(r) = c.current() {
                records.push(r);
            }
        }
    }
    if args.quiet {
        for r in &records {
            println!("{}", r.id);
        }
        return Ok(());
    }
    match args.format.as_str() {
        "json" => {
            let all: Vec<_> = records.iter().map(|r| r.oci_state()).collect();
            println!("{}", serde_json::to_string(&all)?);
        }
        "table" => {
            println!(
                "{:<24} {:<8} {:<10} {:<40} CREATED",
                "ID", "PID", "STATUS", "BUNDLE"
            );
            for r in &records {
                let pid = r.pid.filter(|_| r.status != Status::Stopped).unwrap_or(0);
                println!(
                    "{:<24} {:<8} {:<10} {:<40} {}",
                    r.id,
                    pid,
                    r.status.as_str(),
                    r.bundle.display(),
                    r.created
                );
            }
        }
        other => bail!("invalid format {other:?} (table or json)"),
    }
    Ok(())
}

/// `ps ID`: the container's processes (guest pids).
pub fn ps(global: &Global, id: &str, format: &str) -> anyhow::Result<()> {
    let c = Locked::open(&global.root(), id)?;
    let pids = lifecycle::processes(&c)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        _ => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// A process.json (OCI `process`) to run instead of the args.
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    /// Give the process a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and forward it (runc modes always do).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Return once the process runs; with --pid-file, the pid of the
    /// process that lives as long as it.
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[arg(long, visible_alias = "workdir", short = 'w')]
    pub cwd: Option<String>,
    /// uid[:gid], or (Docker) a name from the container's /etc/passwd.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    #[arg(long, hide = true)]
    pub exec_child: bool,
    pub id: String,
    pub command: Vec<String>,
}

/// `exec`: one more process in the running container; this command lives
/// as long as it and exits with its status.
pub fn exec(global: &Global, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let c = Locked::open(&global.root(), &args.id)?;
    let target = lifecycle::exec::target(&c)?;
    let plan = Plan::read(&c.dir().join(state::PLAN))?;
    drop(c);
    let process = exec_process(&plan.spec.process, args)?;
    // Detached, or on a pty whose master goes to a console socket: the
    // process needs a holder of its own; see exec_detached.
    let needs_child = args.detach || (process.terminal && args.console_socket.is_some());
    if needs_child && !args.exec_child {
        return exec_detached(args).map(|_| ExitCode::SUCCESS);
    }
    let interactive = args.interactive || args.process.is_some() || args.pid_file.is_some();
    let exit = lifecycle::exec(&target, &process, interactive)?;
    Ok(monitor::exit_like(exit))
}

/// Runs the exec in a child of ours (its stdio a pty whose master goes to
/// the console socket, or ours) and returns once it runs, its pid in the
/// pid file.
fn exec_detached(args: &ExecArgs) -> anyhow::Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    argv.retain(|a| a != "-d" && a != "--detach");
    let exec_at = argv
        .iter()
        .position(|a| a == "exec")
        .context("no exec in argv")?;
    argv.insert(exec_at + 1, "--exec-child".into());
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(&argv);
    if let Some(socket) = &args.console_socket {
        let slave = console::send_master(socket)?;
        cmd.stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().context("cannot start the exec process")?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, child.id() as i32)?;
    }
    Ok(())
}

/// The exec'd process: the container's own process (env, user, cwd,
/// capabilities, rlimits) with the command's changes, or --process.
fn exec_process(base: &ProcessSpec, args: &ExecArgs) -> anyhow::Result<ProcessSpec> {
    let mut p = match &args.process {
        Some(path) => {
            let json =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let oci: oci_spec::runtime::Process = serde_json::from_slice(&json)
                .with_context(|| format!("invalid process {}", path.display()))?;
            let mut spec = oci_spec::runtime::Spec::default();
            spec.set_process(Some(oci));
            spec.set_hostname(None);
            bulkhead_protocol::ContainerSpec::from_oci(&spec, Default::default())
                .context("invalid --process")?
                .process
        }
        None => {
            if args.command.is_empty() {
                bail!("exec needs a command (or --process)");
            }
            let mut p = base.clone();
            p.args = args.command.clone();
            p.terminal = args.tty;
            p.console_size = None;
            p
        }
    };
    for e in &args.env {
        let key = e.split('=').next().unwrap_or_default();
        p.env.retain(|old| old.split('=').next() != Some(key));
        if e.contains('=') {
            p.env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            p.env.push(format!("{e}={v}"));
        }
    }
    if let Some(cwd) = &args.cwd {
        p.cwd = cwd.clone();
    }
    if let Some(user) = &args.user {
        p.user = parse_user(user);
    }
    if args.tty {
        p.terminal = true;
    }
    if p.terminal && p.console_size.is_none() {
        p.console_size = crate::lifecycle::tty::size()
            .map(|(rows, cols)| bulkhead_protocol::TtySize { rows, cols });
    }
    Ok(p)
}

/// `uid[:gid]` as numbers, anything else a name the guest resolves.
fn parse_user(user: &str) -> User {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(uid), Ok(gid)) => User::Id {
            uid,
            gid,
            additional_gids: Vec::new(),
        },
        (Ok(uid), Err(_)) if g.is_empty() => User::Id {
            uid,
            gid: uid,
            additional_gids: Vec::new(),
        },
        _ => User::Name {
            name: user.to_string(),
        },
    }
}

#[derive(Args, Debug)]
pub struct RunBundleArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
}

/// runc's `run`: create + start, then (unless detached) wait for the
/// container and delete it.
pub fn run_bundle(global: &Global, args: &RunBundleArgs) -> anyhow::Result<ExitCode> {
    let id = &args.create.id;
    create(global, &args.create)?;
    start(global, id)?;
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let root = global.root();
    let exit = loop {
        let c = Locked::open(&root, id)?;
        let r = c.current()?;
        if r.status == Status::Stopped {
            let exit = r.exit.unwrap_or(Exit::Code(255));
            if !args.keep {
                lifecycle::delete(c, true)?;
            }
            break exit;
        }
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Ok(ExitCode::from(exit.code().clamp(0, 255) as u8))
}

/// `spec`: a starting config.json in the bundle, as `runc spec` writes.
pub fn spec(bundle: Option<&Path>) -> anyhow::Result<()> {
    let dir = bundle.unwrap_or(Path::new("."));
    let path = dir.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
        p.set_args(Some(vec!["sh".to_string()]));
    }
    spec.save(&path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

pub use features::features;

/// Every capability name, as `features` lists them.
fn features_capabilities() -> Vec<String> {
    use oci_spec::runtime::Capability;
    [
        Capability::AuditControl,
        Capability::AuditRead,
        Capability::AuditWrite,
        Capability::BlockSuspend,
        Capability::Bpf,
        Capability::CheckpointRestore,
        Capability::Chown,
        Capability::DacOverride,
        Capability::DacReadSearch,
        Capability::Fowner,
        Capability::Fsetid,
        Capability::IpcLock,
        Capability::IpcOwner,
        Capability::Kill,
        Capability::Lease,
        Capability::LinuxImmutable,
        Capability::MacAdmin,
        Capability::MacOverride,
        Capability::Mknod,
        Capability::NetAdmin,
        Capability::NetBindService,
        Capability::NetBroadcast,
        Capability::NetRaw,
        Capability::Perfmon,
        Capability::Setgid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::Setuid,
        Capability::SysAdmin,
        Capability::SysBoot,
        Capability::SysChroot,
        Capability::SysModule,
        Capability::SysNice,
        Capability::SysPacct,
        Capability::SysPtrace,
        Capability::SysRawio,
        Capability::SysResource,
        Capability::SysTime,
        Capability::SysTtyConfig,
        Capability::Syslog,
        Capability::WakeAlarm,
    ]
    .iter()
    .filter_map(|c| serde_json::to_value(c).ok())
    .filter_map(|v| v.as_str().map(str::to_string))
    .collect()
}
