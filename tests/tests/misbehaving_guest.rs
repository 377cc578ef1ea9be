//! A guest that misbehaves is the guest's problem: each case ends the run
//! with a one-line error naming what went wrong, an exit status, and
//! nothing left on the host. The guest programs are built by the test: a
//! guest agent (the VM's PID 1, given as `BULKHEAD_AGENT` to a cold run)
//! that exits at once (the kernel panics), never listens on its vsock
//! port, or accepts the host's connection and never answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_tests::leftovers::processes_mentioning;
use bulkhead_tests::{workspace, Root, Run};

/// `tests/fixtures/bad_agent.c` built to behave as `behaviour`.
fn bad_agent(behaviour: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("agent-{behaviour}"));
    let status = Command::new("cc")
        .args(["-static", "-O2"])
        .arg(format!("-DBEHAVIOUR={behaviour}"))
        .arg("-o")
        .arg(&out)
        .arg(workspace().join("tests/fixtures/bad_agent.c"))
        .status()
        .expect("run cc");
    assert!(status.success(), "cannot build bad_agent.c as {behaviour}");
    out
}

/// A cold run of `true` on a guest whose agent is `agent`, with the agent
/// deadline at `timeout_s`; how long it took.
fn run_with_agent(root: &Root, agent: &Path, timeout_s: u32) -> (Run, Duration) {
    let started = Instant::now();
    let run = root.bulkhead_with_env(
        &["run", "--cold", "--network", "none", "busybox", "true"],
        &[
            ("BULKHEAD_AGENT", agent.to_str().unwrap()),
            ("BULKHEAD_AGENT_TIMEOUT", &timeout_s.to_string()),
        ],
    );
    (run, started.elapsed())
}

/// The run failed as bulkhead fails (125, one first line naming `want`)
/// and left nothing: no run directory, no process naming the root.
fn assert_failed_cleanly(root: &Root, run: &Run, want: &str) {
    assert_eq!(run.code, Some(125), "{run:?}");
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("bulkhead: ") && first.contains(want),
        "the first line does not say {want:?}: {run:?}"
    );
    root.assert_clean(run);
    let left = processes_mentioning(&root.path().to_string_lossy());
    assert!(left.is_empty(), "processes left: {left:?}");
}

#[test]
fn a_guest_kernel_panic_is_reported_with_its_reason() {
    let root = Root::new();
    let agent = bad_agent("PANIC", root.path());
    let (run, _) = run_with_agent(&root, &agent, 300);
    assert_failed_cleanly(
        &root,
        &run,
        "the guest kernel panicked: Attempted to kill init!",
    );
}

#[test]
fn a_guest_that_never_listens_is_given_up_after_the_deadline() {
    let root = Root::new();
    let agent = bad_agent("DEAF", root.path());
    let (run, took) = run_with_agent(&root, &agent, 40);
    assert_failed_cleanly(&root, &run, "the guest agent did not answer within 40s");
    assert!(took >= Duration::from_secs(40), "gave up early: {took:?}");
}

#[test]
fn a_guest_that_accepts_and_never_answers_is_given_up_after_the_deadline() {
    let root = Root::new();
    let agent = bad_agent("SILENT", root.path());
    let (run, _) = run_with_agent(&root, &agent, 90);
    // The connection is made (the guest listens) before the deadline; the
    // handshake's reply is what never comes.
    assert_failed_cleanly(&root, &run, "the guest agent did not answer within 90s");
    assert!(
        run.stderr.contains("handshake"),
        "it gave up before connecting, not on the handshake: {run:?}"
    );
}
