//! `bulkhead run`: containers from OCI images, each in its own microVM,
//! behaving like `docker run`. Every test runs real VMs with the real
//! kernel and agent — restored from the suite's shared template, or booted
//! where a test says `--cold` — so each one checks as much as one VM can
//! show.

use std::time::Duration;

use bulkhead_tests::oci::{busybox_layer, dir, file, whiteout, write_layout};
use bulkhead_tests::{tempdir, Root};
use serde_json::json;

#[test]
fn busybox_process_options_limits_and_exit_code() {
    let root = Root::new();
    let script = r#"
        echo "pid=$$"
        echo "host=$(hostname)"
        echo "cwd=$(pwd)"
        echo "foo=$FOO"
        echo "id=$(id -u):$(id -g)"
        echo "mem=$(cat /sys/fs/cgroup/memory.max)"
        echo "pids=$(cat /sys/fs/cgroup/pids.max)"
        echo "cpu=$(cat /sys/fs/cgroup/cpu.max)"
        echo "cgroup=$(cat /proc/self/cgroup)"
        touch /tmp/x 2>/dev/null && echo tmp-writable
        echo oops >&2
        exit 3
    "#;
    let run = root.bulkhead(&[
        "run",
        "--hostname",
        "box1",
        "-e",
        "FOO=bar baz",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "-m",
        "64m",
        "--pids-limit",
        "20",
        "--cpus",
        "0.5",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");
    let out = &run.stdout;
    for want in [
        "pid=1\n",
        "host=box1\n",
        "cwd=/tmp\n",
        "foo=bar baz\n",
        "id=65534:65534\n",
        "mem=67108864\n",
        "pids=20\n",
        "cpu=50000 100000\n",
        "cgroup=0::/\n",
        "tmp-writable\n",
    ] {
        assert!(out.contains(want), "missing {want:?}: {run:?}");
    }
    assert!(run.stderr.contains("oops"), "{run:?}");
    root.assert_clean(&run);
}

#[test]
fn oci_image_config_defaults_overrides_and_whiteouts() {
    let root = Root::new();
    let work = tempdir();
    let layers = vec![
        busybox_layer(),
        vec![
            file("srv/keep", b"kept\n", 0o644),
            file("srv/gone", b"x", 0o644),
            dir("srv/opaque"),
            file("srv/opaque/old", b"x", 0o644),
        ],
        vec![
            whiteout("srv/gone"),
            dir("srv/opaque"),
            file("srv/opaque/.wh..wh..opq", b"", 0o644),
            file("srv/opaque/new", b"new\n", 0o644),
        ],
    ];
    let config = json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo default-cmd cwd=$(pwd) user=$(id -u) greeting=$GREETING; ls /srv /srv/opaque"],
        "Env": ["GREETING=hi", "PATH=/bin"],
        "WorkingDir": "/srv",
        "User": "app"
    });
    let layout = write_layout(&work.path().join("layout"), &layers, config, "v1");
    let image = format!("oci:{}:v1", layout.display());

    // One VM with the image's defaults.
    let run = root.bulkhead(&["run", &image]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("default-cmd cwd=/srv user=1000 greeting=hi\n"),
        "{run:?}"
    );
    assert!(run.stdout.contains("keep\n"), "{run:?}");
    assert!(
        !run.stdout.contains("gone"),
        "whiteout not applied: {run:?}"
    );
    assert!(
        run.stdout.contains("new\n") && !run.stdout.contains("old\n"),
        "opaque dir not applied: {run:?}"
    );

    // One VM with everything overridden, Docker's way: args replace Cmd,
    // --entrypoint replaces Entrypoint (and drops Cmd), -e wins over Env.
    let run = root.bulkhead(&[
        "run",
        "--entrypoint",
        "/bin/echo",
        "-e",
        "GREETING=bye",
        "-u",
        "0",
        "-w",
        "/",
        &image,
        "over",
        "ridden",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout.trim_end(), "over ridden", "{run:?}");
    root.assert_clean(&run);
}

#[test]
fn named_volume_persists_across_runs() {
    let root = Root::new();
    let run = root.bulkhead(&[
        "run",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo persisted > /data/f; echo written",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let run = root.bulkhead(&[
        "run",
        "-v",
        "data:/data:ro",
        "busybox",
        "sh",
        "-c",
        "cat /data/f; echo x > /data/g || echo read-only",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("persisted\n"), "{run:?}");
    assert!(run.stdout.contains("read-only\n"), "{run:?}");
    let ls = root.bulkhead(&["volume", "ls"]);
    assert!(ls.stdout.contains("data"), "{ls:?}");
    let rm = root.bulkhead(&["volume", "rm", "data"]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    assert!(!root.bulkhead(&["volume", "ls"]).stdout.contains("data"));
    root.assert_clean(&run);
}

#[test]
fn stdin_is_piped_with_dash_i() {
    let root = Root::new();
    // 200 KB through stdin and back out, compared byte for byte: data
    // corrupted anywhere on the way (vsock, agent, guest) shows up here.
    let input: Vec<u8> = (0..20000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let run = root.bulkhead_with_stdin(
        &["run", "-i", "busybox", "sh", "-c", "cat; echo done"],
        &input,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let mut want = String::from_utf8(input).unwrap();
    want.push_str("done\n");
    assert!(
        run.stdout == want,
        "stdin came back different ({} vs {} bytes)",
        run.stdout.len(),
        want.len()
    );
    root.assert_clean(&run);
}

#[test]
fn sigterm_goes_to_the_container() {
    let root = Root::new();
    // Cold, so the booted path keeps an end-to-end test of signals too.
    let mut child = root.spawn(&[
        "run",
        "--cold",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 1; done",
    ]);
    // Signal only once the container itself says it is up.
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut out = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line == "ready" {
                let _ = ready_tx.send(());
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(600)).is_ok();
    if ready {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    } else {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    assert!(ready, "container never started: {out}");
    assert_eq!(status.code(), Some(7), "stdout: {out}");
    assert!(out.contains("got TERM\n"), "{out}");
    assert!(root.leftover_runs().is_empty());
}

#[test]
fn command_not_found_is_127_and_not_executable_is_126() {
    let root = Root::new();
    let run = root.bulkhead(&["run", "busybox", "/no/such/command"]);
    assert_eq!(run.code, Some(127), "{run:?}");
    assert!(run.stderr.contains("/no/such/command"), "{run:?}");
    root.assert_clean(&run);
}

#[test]
fn oom_kill_is_137_with_a_message() {
    let root = Root::new();
    // One 48 MiB buffer filled by a single read: the memory limit stops it.
    let run = root.bulkhead(&[
        "run",
        "-m",
        "16m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=48M",
        "count=1",
    ]);
    assert_eq!(run.code, Some(137), "{run:?}");
    assert!(run.stderr.contains("out of memory"), "{run:?}");
    root.assert_clean(&run);
}

#[test]
fn bad_images_and_options_fail_before_any_vm() {
    let root = Root::new();
    let work = tempdir();

    let run = root.bulkhead(&["run", "no-such-image", "true"]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("no-such-image"), "{run:?}");

    let run = root.bulkhead(&[
        "run",
        &format!("oci:{}", work.path().join("missing").display()),
        "true",
    ]);
    assert_eq!(run.code, Some(125), "{run:?}");

    // A layout whose layer blob was tampered with.
    let layout = write_layout(
        &work.path().join("bad"),
        &[busybox_layer()],
        json!({"Cmd": ["true"]}),
        "t",
    );
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    let mut data = std::fs::read(&biggest).unwrap();
    data[1000] ^= 0xff;
    std::fs::write(&biggest, data).unwrap();
    let run = root.bulkhead(&["run", &format!("oci:{}:t", layout.display())]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("corrupt"), "{run:?}");

    let run = root.bulkhead(&["run", "-m", "lots", "busybox", "true"]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("invalid size"), "{run:?}");

    // Host directories are shared (tests/shares.rs), by absolute path only.
    let run = root.bulkhead(&["run", "-v", "etc/x:/x", "busybox", "true"]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("is a relative path"), "{run:?}");

    let run = root.bulkhead(&["run", "-u", "nosuchuser", "busybox", "true"]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("nosuchuser"), "{run:?}");
    assert!(root.leftover_runs().is_empty());
}

#[test]
fn image_import_ls_rm() {
    let root = Root::new();
    let work = tempdir();
    let layout = write_layout(
        &work.path().join("l"),
        &[busybox_layer()],
        json!({"Cmd": ["sh"]}),
        "latest",
    );
    let run = root.bulkhead(&[
        "image",
        "import",
        &format!("oci:{}", layout.display()),
        "mine",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let ls = root.bulkhead(&["image", "ls"]);
    assert!(ls.stdout.lines().any(|l| l.starts_with("mine ")), "{ls:?}");
    let rm = root.bulkhead(&["image", "rm", "mine"]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    let ls = root.bulkhead(&["image", "ls"]);
    assert!(!ls.stdout.lines().any(|l| l.starts_with("mine ")), "{ls:?}");
    let rm = root.bulkhead(&["image", "rm", "mine"]);
    assert_ne!(rm.code, Some(0), "{rm:?}");
}
