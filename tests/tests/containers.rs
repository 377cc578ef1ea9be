//! Containers that outlive the command: the Docker-like commands on
//! `run -d` (ps, logs, exec, stop, kill, rm) and the runc-compatible ones
//! on an OCI bundle (create, start, state, exec, ps, pause, kill, delete,
//! hooks), with their errors. Real VMs restored from the suite's template;
//! each test checks that nothing of its containers is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_tests::leftovers::processes_mentioning;
use bulkhead_tests::{tempdir, Root, Run};
use serde_json::json;

/// The state root bulkhead uses under a test's store root.
fn state_root(root: &Root) -> PathBuf {
    root.path().join("containers")
}

/// Containers left in the state root, and live processes naming the root.
fn assert_nothing_left(root: &Root) {
    let dir = state_root(root);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "container state left behind: {left:?}");
    let needle = root.path().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = processes_mentioning(&needle);
        if live.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {live:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

/// Polls `bulkhead logs` until it holds `want`.
fn wait_for_log(root: &Root, id: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let logs = root.bulkhead(&["logs", id]);
        ok(&logs);
        if logs.stdout.contains(want) {
            return logs.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "no {want:?} in the logs: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn detached_service_ps_logs_exec_stop_rm() {
    let root = Root::new();
    let script = r#"echo started; trap 'echo got TERM; exit 3' TERM; while :; do sleep 1; done"#;
    let run = root.bulkhead(&["run", "-d", "--name", "svc", "busybox", "sh", "-c", script]);
    ok(&run);
    assert_eq!(run.stdout.trim(), "svc");

    let ps = root.bulkhead(&["ps"]);
    ok(&ps);
    let line = ps
        .stdout
        .lines()
        .find(|l| l.starts_with("svc "))
        .unwrap_or_default();
    assert!(
        line.contains("busybox") && line.ends_with("running"),
        "{ps:?}"
    );
    wait_for_log(&root, "svc", "started\n");

    let exec = root.bulkhead(&[
        "exec",
        "svc",
        "sh",
        "-c",
        "echo in=$(hostname); ls /proc | grep -c '^[0-9]' >/dev/null; exit 5",
    ]);
    assert_eq!(exec.code, Some(5), "{exec:?}");
    assert_eq!(exec.stdout, "in=svc\n", "{exec:?}");
    let exec_in = root.bulkhead_with_stdin(&["exec", "-i", "svc", "cat"], b"through stdin");
    ok(&exec_in);
    assert_eq!(exec_in.stdout, "through stdin");

    // Removing a running container needs -f.
    let rm = root.bulkhead(&["rm", "svc"]);
    assert_eq!(rm.code, Some(1), "{rm:?}");
    assert!(rm.stderr.contains("not stopped"), "{rm:?}");

    let stop = root.bulkhead(&["stop", "-t", "30", "svc"]);
    ok(&stop);
    let ps = root.bulkhead(&["ps"]);
    assert!(
        !ps.stdout.contains("svc "),
        "stopped containers are listed only with -a: {ps:?}"
    );
    let ps = root.bulkhead(&["ps", "-a"]);
    assert!(ps.stdout.contains("Exited (3)"), "{ps:?}");
    let logs = root.bulkhead(&["logs", "svc"]);
    assert_eq!(logs.stdout, "started\ngot TERM\n", "{logs:?}");
    let exec = root.bulkhead(&["exec", "svc", "true"]);
    assert_eq!(exec.code, Some(1), "{exec:?}");
    assert!(exec.stderr.contains("not running"), "{exec:?}");
    ok(&root.bulkhead(&["rm", "svc"]));
    assert_nothing_left(&root);
}

#[test]
fn stop_kills_after_its_grace_and_rm_force_and_logs_follow() {
    let root = Root::new();
    // Ignores SIGTERM: stop must fall back to SIGKILL after -t.
    ok(&root.bulkhead(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "busybox",
        "sh",
        "-c",
        "trap '' TERM; echo up; while :; do sleep 1; done",
    ]));
    wait_for_log(&root, "stubborn", "up\n");
    let started = Instant::now();
    ok(&root.bulkhead(&["stop", "-t", "2", "stubborn"]));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "stop did not wait its grace"
    );
    let inspect = root.bulkhead(&["inspect", "stubborn"]);
    ok(&inspect);
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(v[0]["State"]["Status"], "stopped", "{inspect:?}");
    assert_eq!(v[0]["State"]["ExitCode"], 137, "{inspect:?}");

    // logs -f follows a running container to its end.
    ok(&root.bulkhead(&[
        "run",
        "-d",
        "--name",
        "talker",
        "busybox",
        "sh",
        "-c",
        "echo one; sleep 3; echo two",
    ]));
    let follow = root.bulkhead(&["logs", "-f", "talker"]);
    ok(&follow);
    assert_eq!(follow.stdout, "one\ntwo\n", "{follow:?}");

    // --rm: gone once it exits by itself, or once stopped.
    ok(&root.bulkhead(&["run", "-d", "--rm", "--name", "brief", "busybox", "true"]));
    ok(&root.bulkhead(&[
        "run", "-d", "--rm", "--name", "longer", "busybox", "sleep", "1000",
    ]));
    ok(&root.bulkhead(&["stop", "-t", "1", "longer"]));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ps = root.bulkhead(&["ps", "-a", "-q"]);
        ok(&ps);
        if !ps.stdout.lines().any(|l| l == "brief" || l == "longer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "--rm containers were kept: {ps:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // rm -f of a running one.
    ok(&root.bulkhead(&["run", "-d", "--name", "victim", "busybox", "sleep", "1000"]));
    ok(&root.bulkhead(&["rm", "-f", "victim", "stubborn", "talker"]));
    let gone = root.bulkhead(&["logs", "victim"]);
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert!(gone.stderr.contains("does not exist"), "{gone:?}");
    assert_nothing_left(&root);
}

/// SIGKILL must win at once, as with runc (podman fails `rm -f` if the
/// container outlives it by 5 s): a guest that has not reported the kill
/// within the grace loses its VM. A grace of 0 ms makes every guest too
/// slow, so the host's forced end is what ends this container.
#[test]
fn sigkill_ends_the_vm_when_the_guest_does_not_kill_in_time() {
    let root = Root::new();
    let run = root.bulkhead_with_env(
        &[
            "run",
            "-d",
            "--name",
            "slow",
            "busybox",
            "sh",
            "-c",
            "echo up; sleep 1000",
        ],
        &[("BULKHEAD_KILL_GRACE_MS", "0")],
    );
    ok(&run);
    wait_for_log(&root, "slow", "up\n");
    let record = root.bulkhead(&["state", "slow"]);
    ok(&record);
    let pid = serde_json::from_str::<serde_json::Value>(&record.stdout).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    ok(&root.bulkhead(&["kill", "slow", "KILL"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "the monitor outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let inspect = root.bulkhead(&["inspect", "slow"]);
    ok(&inspect);
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(v[0]["State"]["Status"], "stopped", "{inspect:?}");
    assert_eq!(v[0]["State"]["ExitCode"], 137, "{inspect:?}");
    let logs = root.bulkhead(&["logs", "slow"]);
    assert!(
        logs.stdout.contains("did not end the container")
            || logs.stderr.contains("did not end the container"),
        "the VM was not ended by the host: {logs:?}"
    );
    ok(&root.bulkhead(&["rm", "slow"]));
    assert_nothing_left(&root);
}

/// An OCI bundle with a busybox rootfs and `config.json` from `spec`,
/// changed by `edit`.
fn bundle(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "id", "pwd", "hostname", "ls", "touch", "test",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let spec = bulkhead_tests::bulkhead(&["spec", "--bundle", bundle.to_str().unwrap()]);
    assert_eq!(spec.code, Some(0), "{spec:?}");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = json!(false);
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    bundle
}

fn pid_alive(pid: i32) -> bool {
    bulkhead_tests::leftovers::process_alive(pid)
}

#[test]
fn runc_lifecycle_with_hooks_exec_pause_and_errors() {
    let root = Root::new();
    let tmp = tempdir();
    let hook_out = tmp.path().join("hooks");
    std::fs::create_dir(&hook_out).unwrap();
    let hook = |name: &str| {
        json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}", hook_out.display())]
        })
    };
    let bundle = bundle(tmp.path(), |c| {
        c["process"]["args"] = json!(["sh", "-c", "echo main out; sleep 1000"]);
        c["process"]["cwd"] = json!("/");
        c["hostname"] = json!("ocibox");
        c["annotations"] = json!({"org.example/k": "v"});
        c["hooks"] = json!({
            "prestart": [hook("prestart")],
            "poststart": [hook("poststart")],
            "poststop": [hook("poststop")],
        });
    });
    let b = bundle.to_str().unwrap();
    let pid_file = tmp.path().join("pid");

    // Errors first: each a one-line message and runc's status 1.
    for (args, want) in [
        (vec!["state", "nosuch"], "container nosuch does not exist"),
        (vec!["start", "nosuch"], "does not exist"),
        (
            vec!["create", "--bundle", "/nonexistent/bundle", "c0"],
            "cannot use bundle",
        ),
        (vec!["kill", "nosuch", "KILL"], "does not exist"),
        (
            vec!["create", "--bundle", b, "../evil"],
            "invalid container id",
        ),
    ] {
        let run = root.bulkhead_detaching(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        assert!(run.stderr.contains(want), "{args:?}: {run:?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{args:?}: {run:?}");
    }
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.json"), "{ not json").unwrap();
    let run = root.bulkhead_detaching(&["create", "--bundle", bad.to_str().unwrap(), "c1"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("invalid") && run.stderr.contains("config.json"),
        "{run:?}"
    );

    let log = tmp.path().join("runtime.log");
    let create = root.bulkhead_detaching(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        b,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "oci1",
    ]);
    ok(&create);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    let state = |root: &Root| -> serde_json::Value {
        let s = root.bulkhead(&["state", "oci1"]);
        ok(&s);
        serde_json::from_str(&s.stdout).unwrap()
    };
    let s = state(&root);
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"], pid);
    assert_eq!(s["annotations"]["org.example/k"], "v");
    let prestart: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hook_out.join("prestart")).unwrap()).unwrap();
    assert_eq!(prestart["id"], "oci1");
    assert_eq!(prestart["pid"], pid);

    ok(&root.bulkhead(&["start", "oci1"]));
    assert_eq!(state(&root)["status"], "running");
    assert!(hook_out.join("poststart").exists());
    let again = root.bulkhead(&["start", "oci1"]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("already running"), "{again:?}");
    let del = root.bulkhead(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "delete",
        "oci1",
    ]);
    assert_eq!(del.code, Some(1), "{del:?}");
    assert!(del.stderr.contains("not stopped"), "{del:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(logged.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");

    let exec = root.bulkhead(&["exec", "oci1", "sh", "-c", "echo exec $(hostname); exit 6"]);
    assert_eq!(exec.code, Some(6), "{exec:?}");
    assert_eq!(exec.stdout, "exec ocibox\n");
    // `spec` makes root.readonly true, as runc's does.
    let ro = root.bulkhead(&["exec", "oci1", "touch", "/x"]);
    assert_eq!(ro.code, Some(1), "{ro:?}");
    assert!(ro.stderr.contains("Read-only file system"), "{ro:?}");
    let ps = root.bulkhead(&["ps", "--format", "json", "oci1"]);
    ok(&ps);
    let pids: Vec<u32> = serde_json::from_str(&ps.stdout).unwrap();
    assert!(!pids.is_empty(), "{ps:?}");
    ok(&root.bulkhead(&["pause", "oci1"]));
    assert_eq!(state(&root)["status"], "paused");
    ok(&root.bulkhead(&["resume", "oci1"]));
    assert_eq!(state(&root)["status"], "running");
    let list = root.bulkhead(&["list", "--format", "json"]);
    ok(&list);
    assert!(list.stdout.contains("\"oci1\""), "{list:?}");

    ok(&root.bulkhead(&["kill", "oci1", "KILL"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the monitor outlived the container"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state(&root)["status"], "stopped");
    ok(&root.bulkhead(&["delete", "oci1"]));
    let poststop: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hook_out.join("poststop")).unwrap()).unwrap();
    assert_eq!(poststop["status"], "stopped");
    let gone = root.bulkhead(&["state", "oci1"]);
    assert_eq!(gone.code, Some(1), "{gone:?}");
    // A bundle rootfs is the container's root, written in place.
    assert_nothing_left(&root);
}

#[test]
fn delete_force_of_a_created_container_and_a_killed_monitor_leave_nothing() {
    let root = Root::new();
    let tmp = tempdir();
    let bundle = bundle(tmp.path(), |c| {
        c["process"]["args"] = json!(["sh", "-c", "echo hi > /written; sleep 1000"]);
        c["root"]["readonly"] = json!(false);
    });
    let b = bundle.to_str().unwrap();
    let pid_file = tmp.path().join("pid");
    ok(&root.bulkhead_detaching(&[
        "create",
        "--bundle",
        b,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "k1",
    ]));
    ok(&root.bulkhead(&["start", "k1"]));
    // The rootfs is the container's root, written in place.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bundle.join("rootfs/written").exists() {
        assert!(
            Instant::now() < deadline,
            "the container never wrote its root"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // kill -9 of the monitor: its VM and virtiofsd go with it.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on a pid we read from the pid file.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = root.bulkhead(&["state", "k1"]);
    ok(&s);
    assert!(s.stdout.contains("\"stopped\""), "{s:?}");
    ok(&root.bulkhead(&["delete", "k1"]));

    ok(&root.bulkhead_detaching(&["create", "--bundle", b, "k2"]));
    ok(&root.bulkhead(&["delete", "--force", "k2"]));
    ok(&root.bulkhead(&["delete", "--force", "k2"]));
    assert_nothing_left(&root);
}
