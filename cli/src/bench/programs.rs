//! Finding the baseline programs: on PATH (like `which`) or where asked.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first executable `name` in the directories of `path_var`.
pub fn find_in(name: &str, path_var: &str) -> Option<PathBuf> {
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| is_executable(p))
}

/// `name` on our PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    find_in(name, &std::env::var("PATH").unwrap_or_default())
}

/// The last `lines` lines of a child's output, for error messages.
pub fn tail(output: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(output);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads a child's pipe to its end on a thread, so the child never blocks
/// on a full pipe while we wait for it.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

/// Like `Child::wait_with_output`, but kills the child after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("did not finish within {} s; killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let collect =
        |h: Option<JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn finds_only_executables_in_path_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let plain = a.path().join("tool");
        std::fs::write(&plain, "").unwrap();
        let exe = b.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_var = format!("{}::{}", a.path().display(), b.path().display());
        assert_eq!(find_in("tool", &path_var), Some(exe));
        assert_eq!(find_in("absent", &path_var), None);
        assert_eq!(find_in("tool", ""), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail(b"only", 5), "only");
        assert_eq!(tail(b"", 3), "");
    }

    #[test]
    fn waits_with_output_or_kills_after_the_timeout() {
        let child = std::process::Command::new("sh")
            .args(["-c", "echo out; echo err >&2"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_timeout(child, Duration::from_secs(10)).unwrap();
        assert!(out.status.success());
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
        let child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let e = wait_with_timeout(child, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("killed"));
    }
}
