//! Fixtures shared by the end-to-end tests: the guest kernel, the bulkhead
//! binary, initramfs images, and a way to run bulkhead and see what it did.
//!
//! Everything heavy is built once per test process and cached: the kernel by
//! `guest-kernel-config/build.sh` (outside the repo, keyed by its inputs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub mod elf;

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
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(out: Output) -> Run {
        Run {
            code: out.status.code(),
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
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
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
