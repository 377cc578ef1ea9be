//! Host-side harness: a busybox image in a temp dir and the agent binary
//! serving on a Unix socket in `--no-init` mode. Everything a test makes
//! (dirs, the agent process) is removed when its handle drops; the
//! container mounts live in the containers' own mount namespaces and die
//! with them.

#![allow(dead_code)]

use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bulkhead_protocol::{
    AgentClient, ContainerSpec, Event, ExitStatus, ProcessSpec, Source, Storage,
};

const BUSYBOX: &str = "/bin/busybox";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "bulkhead-agent-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Skips the calling test (returns early) when it cannot run here.
#[macro_export]
macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            eprintln!("skipped: {}", $why);
            return;
        }
    };
}

pub fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: needs {BUSYBOX} (apt-get install busybox-static)");
        return false;
    }
    true
}

/// Builds a minimal image at `root`: static busybox with every applet
/// linked, and the /etc files the tests rely on.
fn build_image(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.contains('/') {
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nstaff:x:50:nobody\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/not-executable"), "#!/bin/sh\necho no\n").unwrap();
}

/// The cgroup v2 mount to use, if this host has one we may write to.
pub fn cgroup_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// Controllers enabled for children of `root`.
pub fn controllers(root: &Path) -> String {
    std::fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default()
}

/// A running agent in `--no-init` mode; killed and cleaned up on drop.
pub struct Agent {
    child: Child,
    pub dir: TempDir,
    socket: PathBuf,
    /// The agent's pid as it sees itself: its cgroups are named after it.
    own_pid: Option<u32>,
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(cgroup_root())
    }

    pub fn start_with(cgroup_root: Option<PathBuf>) -> Agent {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead-agent"));
        cmd.arg("--no-init")
            .arg("--listen-unix")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        match &cgroup_root {
            Some(root) => cmd.arg("--cgroup-root").arg(root),
            None => cmd.arg("--no-cgroups"),
        };
        Self::spawn(cmd, dir, socket)
    }

    /// The agent in init mode (system mounts, re-rooting, reboot on
    /// shutdown) as PID 1 of fresh pid and mount namespaces made by
    /// util-linux `unshare`; its reboot then only ends that namespace.
    pub fn start_as_namespace_init() -> Agent {
        let dir = TempDir::new("init");
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "--kill-child",
        ])
        .arg(env!("CARGO_BIN_EXE_bulkhead-agent"))
        .arg("--listen-unix")
        .arg(&socket);
        let mut agent = Self::spawn(cmd, dir, socket);
        // PID 1 of its namespace; it powers off without removing its
        // cgroups (the VM would be gone), so the harness does.
        agent.own_pid = Some(1);
        agent
    }

    fn spawn(mut cmd: Command, dir: TempDir, socket: PathBuf) -> Agent {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        build_image(&dir.path().join("image"));
        let child = cmd.spawn().expect("spawn bulkhead-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "agent did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent {
            child,
            dir,
            socket,
            own_pid: None,
        }
    }

    /// The busybox image this agent's containers use as overlay lower.
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("image")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect_raw(&self) -> UnixStream {
        // The socket file appears at bind(), a moment before listen().
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return s,
                Err(e)
                    if Instant::now() < deadline
                        && e.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("connect to agent: {e}"),
            }
        }
    }

    pub fn connect(&self) -> AgentClient<UnixStream> {
        let mut c = AgentClient::new(self.connect_raw());
        c.handshake().expect("handshake");
        c
    }

    /// A fresh connection, after closing `old` (the agent serves one
    /// connection at a time).
    pub fn connect_client_after(&self, old: AgentClient<UnixStream>) -> AgentClient<UnixStream> {
        drop(old);
        self.connect()
    }

    /// Where a container's scratch (overlay upper/work) goes.
    pub fn scratch(&self, name: &str) -> String {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p.display().to_string()
    }

    /// A spec for `args` on the busybox image with a directory scratch.
    pub fn spec(&self, args: &[&str]) -> ContainerSpec {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut spec = ContainerSpec::new(ProcessSpec::new(
            args.iter().map(|s| s.to_string()).collect(),
        ));
        spec.storage = Storage {
            lower: Source::directory(self.image().display().to_string()),
            scratch: Some(Source::directory(
                self.scratch(&N.fetch_add(1, Ordering::Relaxed).to_string()),
            )),
            volumes: Vec::new(),
            ..Storage::default()
        };
        spec
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for the agent process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Container inits are the agent's children: kill them while they
        // still are (an orphaned one would be re-parented away), then the
        // agent, then remove the cgroups it can no longer remove.
        let alive = self.child.try_wait().ok().flatten().is_none();
        if alive {
            kill_children(self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_cgroups(self.own_pid.unwrap_or(self.child.id()));
    }
}

/// Kills the agent's children (container inits); each takes its pid
/// namespace down with it.
fn kill_children(agent_pid: u32) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(agent_pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn remove_cgroups(agent_pid: u32) {
    if let Some(root) = cgroup_root() {
        if let Ok(entries) = std::fs::read_dir(&root) {
            let prefix = format!("bulkhead-{agent_pid}-");
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    for _ in 0..100 {
                        if std::fs::remove_dir(e.path()).is_ok() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
    }
}

/// What a finished container produced.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub status: ExitStatus,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code()
    }
}

/// Creates, starts and waits for a container on `client`, feeding
/// `stdin` (then closing it) from a second thread like the CLI does.
pub fn run_on(
    client: AgentClient<UnixStream>,
    spec: &ContainerSpec,
    stdin: &[u8],
) -> (Output, AgentClient<UnixStream>) {
    let mut client = client;
    client.create(spec).expect("create");
    client.start().expect("start");
    let stream = client.into_inner();
    let (mut writer, mut reader) = AgentClient::new(stream.try_clone().unwrap())
        .split()
        .unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        if !stdin.is_empty() {
            writer.send_stdin(&stdin).unwrap();
        }
        writer.close_stdin().unwrap();
        writer.wait().unwrap();
    });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = loop {
        match reader.next_event().expect("event") {
            Event::Stdout(d) => stdout.extend(d),
            Event::Stderr(d) => stderr.extend(d),
            Event::Exit(s) => break s,
            other => panic!("unexpected event {other:?}"),
        }
    };
    feeder.join().unwrap();
    (
        Output {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            status,
        },
        AgentClient::new(stream),
    )
}

pub fn run(agent: &Agent, spec: &ContainerSpec, stdin: &[u8]) -> Output {
    run_on(agent.connect(), spec, stdin).0
}

/// A classic-BPF seccomp filter for x86_64 failing the syscalls `nrs`
/// with EPERM and allowing everything else.
pub fn deny_filter(nrs: &[u32]) -> Vec<u8> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let insn = |code: u16, jt: u8, jf: u8, k: u32| {
        let mut b = code.to_ne_bytes().to_vec();
        b.extend([jt, jf]);
        b.extend(k.to_ne_bytes());
        b
    };
    // seccomp_data: nr at offset 0, arch at 4.
    let mut p = insn(LD_W_ABS, 0, 0, 4);
    p.extend(insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64));
    p.extend(insn(RET_K, 0, 0, RET_ALLOW));
    p.extend(insn(LD_W_ABS, 0, 0, 0));
    for (i, nr) in nrs.iter().enumerate() {
        // Jumps over the remaining compares and the allow, to the deny.
        p.extend(insn(JEQ_K, (nrs.len() - i) as u8, 0, *nr));
    }
    p.extend(insn(RET_K, 0, 0, RET_ALLOW));
    p.extend(insn(
        RET_K,
        0,
        0,
        RET_ERRNO | nix::errno::Errno::EPERM as u32,
    ));
    p
}
