//! OCI hooks, run on the host as runc runs them: each program with its
//! args and env, the container's state JSON on stdin, within its timeout.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use oci_spec::runtime::Hook;

use super::state::Record;

/// Runs `hooks` (of the kind `kind`, for messages) in order; the first
/// failure stops them.
pub fn run_all(kind: &str, hooks: &[Hook], record: &Record) -> anyhow::Result<()> {
    let state = serde_json::to_vec(&record.oci_state())?;
    for hook in hooks {
        run(hook, &state)
            .with_context(|| format!("{kind} hook {} failed", hook.path().display()))?;
    }
    Ok(())
}

fn run(hook: &Hook, state: &[u8]) -> anyhow::Result<()> {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some(argv0) = args.first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        }
        cmd.args(args.iter().skip(1));
    }
    cmd.env_clear();
    for entry in hook.env().iter().flatten() {
        if let Some((k, v)) = entry.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start it")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state);
    }
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{status}");
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {}s", timeout.unwrap_or_default().as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    #[test]
    fn hooks_get_the_state_on_stdin_and_their_failures_count() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state");
        let record = Record::new("c9", "/bundle".into());
        let hook = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("cat > {}; test \"$X\" = 1", out.display()),
            ])
            .env(vec!["X=1".to_string()])
            .build()
            .unwrap();
        run_all("prestart", &[hook], &record).unwrap();
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(state["id"], "c9");
        assert_eq!(state["status"], "creating");

        let failing = HookBuilder::default().path("/bin/false").build().unwrap();
        let e = run_all("poststop", &[failing], &record).unwrap_err();
        assert!(
            format!("{e:#}").contains("poststop hook /bin/false failed"),
            "{e:#}"
        );

        let slow = HookBuilder::default()
            .path("/bin/sleep")
            .args(vec!["sleep".to_string(), "5".to_string()])
            .timeout(1)
            .build()
            .unwrap();
        let e = run_all("prestart", &[slow], &record).unwrap_err();
        assert!(format!("{e:#}").contains("timed out"), "{e:#}");
    }
}
