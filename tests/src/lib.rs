//! Fixtures shared by the end-to-end tests: the guest kernel, the bulkhead
//! binary, initramfs images, and a way to run bulkhead and see what it did.
//!
//! Everything heavy is built once per test process and cached: the kernel by
//! `guest-kernel-config/build.sh` (outside the repo, keyed by its inputs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub mod elf;
pub mod leftovers;
pub mod netns;
pub mod oci;
pub mod registry;
pub mod vsock;

/// Whole boot plus the test's exchanges; a hang fails the test, not CI.
/// Generous: a boot that takes ~25 s alone took 144 s next to two busy
/// processes on our 2-core machines, and over 300 s under heavier load.
pub const VM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The guest kernel: `$BULKHEAD_KERNEL`, or whatever build.sh builds/caches.
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            if let Some(k) = std::env::var_os("BULKHEAD_KERNEL") {
                return PathBuf::from(k);
            }
            let out = Command::new("bash")
                .arg(workspace().join("guest-kernel-config/build.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run guest-kernel-config/build.sh");
            assert!(out.status.success(), "kernel build failed");
            let stdout = String::from_utf8(out.stdout).unwrap();
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("build.sh printed no path")
                    .trim(),
            )
        })
        .clone()
}

/// The `bulkhead` binary: `$BULKHEAD_BIN`, else the newest of target/{release,debug}.
pub fn bulkhead_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("BULKHEAD_BIN") {
        return PathBuf::from(b);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("bulkhead"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("no bulkhead binary: run `cargo build --release` first or set BULKHEAD_BIN")
}

/// A scratch directory removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bulkhead-test-")
        .tempdir()
        .unwrap()
}

/// Compiles `tests/fixtures/<name>.c` into a static binary in `dir`.
pub fn static_c_binary(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(workspace().join("tests/fixtures").join(format!("{name}.c")))
        .status()
        .expect("run cc");
    assert!(status.success(), "cannot compile fixture {name}.c");
    out
}

/// An initramfs whose /init is the test init (fork, console output, reboot).
pub fn test_initramfs(dir: &Path) -> PathBuf {
    let init = static_c_binary("init", dir);
    let out = dir.join("initramfs.cpio");
    bulkhead_rootfs::initramfs::build_initramfs(&init, &[], &out).expect("build initramfs");
    out
}

/// What a finished `bulkhead` invocation did.
pub struct Run {
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(out: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: out.status.code(),
            signal: out.status.signal(),
            // The guest's console tty turns "\n" into "\r\n".
            stdout: String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} signal {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// Runs `bulkhead ARGS` with stdin from /dev/null.
pub fn bulkhead(args: &[&str]) -> Run {
    bulkhead_cmd(args)
}

pub fn bulkhead_cmd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let out = Command::new(bulkhead_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run bulkhead");
    Run::from_output(out)
}

/// True on hosts whose KVM is PVM (the guest kernel runs in the emulator).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A `bulkhead` running in the background, for tests that talk to the guest
/// while it runs. Dropping it kills the VMM, so a failed test leaves no VM.
pub struct Spawned {
    child: Option<std::process::Child>,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

/// Starts `bulkhead ARGS` with stdin from /dev/null, collecting its output.
pub fn spawn_bulkhead<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Spawned {
    let mut child = Command::new(bulkhead_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bulkhead");
    // Drained by threads: a full pipe would stall the VMM's console.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    Spawned {
        child: Some(child),
        stdout: Some(stdout),
        stderr: Some(stderr),
    }
}

impl Spawned {
    /// Whether bulkhead is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for bulkhead to exit, killing it after that
    /// (the `Run` then has no exit code).
    pub fn wait_timeout(mut self, timeout: std::time::Duration) -> Run {
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for bulkhead") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                break child.wait().expect("wait for killed bulkhead");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        Run::from_output(Output {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap_or_default(),
            stderr: self.stderr.take().unwrap().join().unwrap_or_default(),
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes an ext4 image of `size_mib` MiB at `out` holding the tree `src`.
pub fn mkfs_ext4(src: &Path, out: &Path, size_mib: u64) {
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(src)
        .arg(out)
        .arg(format!("{size_mib}M"))
        // It announces creating the file on stdout even with -q.
        .stdout(Stdio::null())
        .status()
        .expect("run mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 -d {} failed", src.display());
}

/// Where every test's runs keep templates, so that one template (made by
/// whichever run needs it first) serves the whole suite.
pub fn shared_templates() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("e2e-templates")
}

/// A private bulkhead root (image store, volumes, run dirs) for one test.
pub struct Root {
    dir: tempfile::TempDir,
    /// Where runs keep templates: the suite's shared directory unless a
    /// test needs templates of its own.
    templates: PathBuf,
    /// The network namespace every bulkhead command runs in: the test's
    /// own, so containers (on bulkhead's default bridge network) never
    /// touch the host's network: no bridge, no nft table, no forwarding.
    netns: netns::NetNs,
}

impl Root {
    pub fn new() -> Root {
        Root {
            dir: tempdir(),
            templates: shared_templates(),
            netns: netns::NetNs::new(),
        }
    }

    /// A root whose runs keep their templates in `templates`.
    pub fn with_templates(templates: &Path) -> Root {
        Root {
            dir: tempdir(),
            templates: templates.to_path_buf(),
            netns: netns::NetNs::new(),
        }
    }

    /// The network namespace this root's commands run in (for a test to
    /// talk to its containers from inside it).
    pub fn netns(&self) -> &netns::NetNs {
        &self.netns
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        // nsenter changes only the network namespace (`ip netns exec` would
        // also give each command a mount namespace of its own).
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path()))
            .arg(bulkhead_bin());
        cmd.args(args)
            .env("BULKHEAD_ROOT", self.path())
            .env("BULKHEAD_KERNEL", kernel())
            .env("BULKHEAD_TEMPLATES", &self.templates);
        cmd
    }

    /// Runs `bulkhead ARGS` in this root with stdin from /dev/null.
    pub fn bulkhead(&self, args: &[&str]) -> Run {
        Run::from_output(
            self.command(args)
                .stdin(Stdio::null())
                .output()
                .expect("run bulkhead"),
        )
    }

    /// Runs `bulkhead ARGS` with stdin from /dev/null and `env` added to
    /// its environment.
    pub fn bulkhead_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from_output(
            self.command(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output()
                .expect("run bulkhead"),
        )
    }

    /// Runs `bulkhead ARGS` with `input` on stdin.
    pub fn bulkhead_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bulkhead");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Run::from_output(out)
    }

    /// Runs a `bulkhead ARGS` that leaves a process holding its stdio (a
    /// container's monitor, as `create` does): waits for the command's exit,
    /// not for the end of its output, which comes with the container's.
    pub fn bulkhead_detaching(&self, args: &[&str]) -> Run {
        let out = tempfile::NamedTempFile::new().unwrap();
        let err = tempfile::NamedTempFile::new().unwrap();
        let status = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(err.reopen().unwrap())
            .status()
            .expect("run bulkhead");
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: status.code(),
            signal: status.signal(),
            stdout: std::fs::read_to_string(out.path()).unwrap_or_default(),
            stderr: std::fs::read_to_string(err.path()).unwrap_or_default(),
        }
    }

    /// Starts `bulkhead ARGS` and returns the child, for signal tests.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bulkhead")
    }

    /// Checks that `run` left no per-run state behind and did not panic.
    pub fn assert_clean(&self, run: &Run) {
        assert!(
            self.leftover_runs().is_empty(),
            "run state left behind: {:?}\n{run:?}",
            self.leftover_runs()
        );
        // A Rust panic ("thread 'main' panicked at src/…"), not a report of
        // a guest kernel panic.
        assert!(!run.stderr.contains("panicked at"), "{run:?}");
    }

    /// Per-run state bulkhead left behind (must be none after a run).
    pub fn leftover_runs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.path().join("run")) {
            Ok(d) => d.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

/// The template a `run --timings` restored, from its timing line; `None`
/// for a cold run.
pub fn restored_template(run: &Run) -> Option<String> {
    run.stderr
        .lines()
        .find_map(|l| l.split("restored template ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
}

/// What the agent prints on the guest console once it listens.
pub const AGENT_READY: &str = "bulkhead-agent: ready";
