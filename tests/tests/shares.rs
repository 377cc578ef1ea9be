//! Host directories in the container (`-v /host/dir:/path[:ro]`, `--mount
//! type=bind,...`): served by a virtiofsd per share over virtio-fs, in
//! warm and cold runs. Data and ownership cross byte-exact both ways,
//! read-only is enforced, and no virtiofsd outlives its run, not even
//! when bulkhead is killed.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_tests::{restored_template, tempdir, Root, Run};
use sha2::{Digest, Sha256};

const BIG: usize = 8 << 20;

/// A host directory to share, writable by any container user.
fn share_dir() -> tempfile::TempDir {
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn random_bytes(len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The processes serving `dir` (running ones: a zombie has no command
/// line), found by their `--shared-dir` argument.
fn virtiofsd_for(dir: &Path) -> Vec<u32> {
    let want = std::fs::canonicalize(dir).unwrap().display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args
            .windows(2)
            .any(|w| w[0] == b"--shared-dir" && w[1] == want.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// No virtiofsd serves `dir`, within a few seconds (a sandboxed child
/// gets its parent's death as a signal).
fn assert_no_virtiofsd(dir: &Path, run: &Run) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = virtiofsd_for(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "virtiofsd {left:?} for {} outlived its run\n{run:?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn volume_arg(dir: &Path, dest: &str, mode: &str) -> String {
    format!("{}:{dest}{mode}", dir.display())
}

/// An 8 MiB random host file read in the container, and one the container
/// writes (the same bytes rotated by one block) read on the host: both
/// compared exactly.
fn files_cross_byte_exact(cold: bool) {
    let root = Root::new();
    let share = share_dir();
    let input = random_bytes(BIG);
    std::fs::write(share.path().join("in.bin"), &input).unwrap();
    let script = "sha256sum /srv/in.bin; \
                  dd if=/srv/in.bin of=/srv/out.bin bs=64k skip=1 2>/dev/null; \
                  dd if=/srv/in.bin bs=64k count=1 2>/dev/null >> /srv/out.bin; \
                  sha256sum /srv/out.bin";
    let v = volume_arg(share.path(), "/srv", "");
    let mut args = vec!["run", "--timings"];
    if cold {
        args.push("--cold");
    }
    args.extend(["-v", &v, "busybox", "sh", "-c", script]);
    let run = root.bulkhead(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    if cold {
        assert!(run.stderr.contains("cold start"), "{run:?}");
        assert_eq!(restored_template(&run), None, "{run:?}");
    } else {
        assert!(run.stderr.contains("warm start"), "{run:?}");
        assert!(restored_template(&run).is_some(), "{run:?}");
    }

    let mut want_out = input[64 << 10..].to_vec();
    want_out.extend_from_slice(&input[..64 << 10]);
    assert!(
        run.stdout
            .contains(&format!("{}  /srv/in.bin\n", sha256_hex(&input))),
        "the container read other bytes: {run:?}"
    );
    let out = std::fs::read(share.path().join("out.bin")).unwrap();
    assert_eq!(out.len(), want_out.len(), "{run:?}");
    assert!(out == want_out, "the host read other bytes than written");
    assert!(
        run.stdout
            .contains(&format!("{}  /srv/out.bin\n", sha256_hex(&want_out))),
        "{run:?}"
    );
    root.assert_clean(&run);
    assert_no_virtiofsd(share.path(), &run);
}

#[test]
fn files_cross_byte_exact_in_a_warm_run() {
    files_cross_byte_exact(false);
}

#[test]
fn files_cross_byte_exact_in_a_cold_run() {
    files_cross_byte_exact(true);
}

#[test]
fn ownership_and_modes_cross_both_ways() {
    let root = Root::new();
    let share = share_dir();
    let owned = share.path().join("owned");
    std::fs::write(&owned, "x").unwrap();
    std::os::unix::fs::chown(&owned, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&owned, std::fs::Permissions::from_mode(0o640)).unwrap();

    let v = volume_arg(share.path(), "/srv", "");
    let run = root.bulkhead(&[
        "run",
        "-v",
        &v,
        "busybox",
        "sh",
        "-c",
        "stat -c 'owned=%u %g %A' /srv/owned; \
         touch /srv/made && chown 4321:8765 /srv/made && chmod 0604 /srv/made && echo made",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("owned=1234 5678 -rw-r-----\n"),
        "{run:?}"
    );
    assert!(run.stdout.contains("made\n"), "{run:?}");
    let made = std::fs::metadata(share.path().join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (4321, 8765), "{run:?}");
    assert_eq!(made.mode() & 0o7777, 0o604, "{run:?}");
    root.assert_clean(&run);

    // A file a non-root container user creates is that user's on the host.
    let run = root.bulkhead(&[
        "run",
        "-u",
        "2000:3000",
        "-v",
        &v,
        "busybox",
        "sh",
        "-c",
        "umask 027; echo mine > /srv/by-user && echo created",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let by_user = std::fs::metadata(share.path().join("by-user")).unwrap();
    assert_eq!((by_user.uid(), by_user.gid()), (2000, 3000), "{run:?}");
    assert_eq!(by_user.mode() & 0o777, 0o640, "{run:?}");
    root.assert_clean(&run);
    assert_no_virtiofsd(share.path(), &run);
}

#[test]
fn a_read_only_share_refuses_writes() {
    let root = Root::new();
    let share = share_dir();
    std::fs::write(share.path().join("keep"), "original\n").unwrap();
    let v = volume_arg(share.path(), "/srv", ":ro");
    let run = root.bulkhead(&[
        "run",
        "-v",
        &v,
        "busybox",
        "sh",
        "-c",
        "cat /srv/keep; touch /srv/new 2>/dev/null && echo created; \
         rm /srv/keep 2>/dev/null && echo removed; echo changed > /srv/keep",
    ]);
    assert!(run.code.is_some_and(|c| c != 0 && c != 125), "{run:?}");
    assert!(run.stdout.contains("original\n"), "{run:?}");
    assert!(!run.stdout.contains("created"), "{run:?}");
    assert!(!run.stdout.contains("removed"), "{run:?}");
    assert_eq!(
        std::fs::read_to_string(share.path().join("keep")).unwrap(),
        "original\n"
    );
    assert!(!share.path().join("new").exists());
    root.assert_clean(&run);
    assert_no_virtiofsd(share.path(), &run);
}

/// Two shares and a named volume, nested: a read-only share inside a
/// writable one and a volume inside that, given innermost first (they
/// are mounted outermost first).
#[test]
fn two_shares_and_a_volume_nested() {
    let root = Root::new();
    let (outer, inner) = (share_dir(), share_dir());
    std::fs::write(outer.path().join("from-outer"), "outer\n").unwrap();
    std::fs::write(inner.path().join("from-inner"), "inner\n").unwrap();
    // The volume's mount point: a read-only share cannot get one made.
    std::fs::create_dir(inner.path().join("vol")).unwrap();
    let mount_inner = format!("type=bind,src={},dst=/a/b,readonly", inner.path().display());
    let v_outer = volume_arg(outer.path(), "/a", "");
    let run = root.bulkhead(&[
        "run",
        "--timings",
        "-v",
        "nested:/a/b/vol",
        "--mount",
        &mount_inner,
        "-v",
        &v_outer,
        "busybox",
        "sh",
        "-c",
        "cat /a/from-outer /a/b/from-inner; \
         echo w > /a/written && echo outer-writable; \
         echo w > /a/b/written 2>/dev/null || echo inner-read-only; \
         echo v > /a/b/vol/f && echo volume-writable",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(restored_template(&run).is_some(), "{run:?}");
    for want in [
        "outer\ninner\n",
        "outer-writable\n",
        "inner-read-only\n",
        "volume-writable\n",
    ] {
        assert!(run.stdout.contains(want), "missing {want:?}: {run:?}");
    }
    assert_eq!(
        std::fs::read_to_string(outer.path().join("written")).unwrap(),
        "w\n"
    );
    assert!(!inner.path().join("written").exists());
    root.assert_clean(&run);
    assert_no_virtiofsd(outer.path(), &run);
    assert_no_virtiofsd(inner.path(), &run);
}

#[test]
fn killing_bulkhead_leaves_no_virtiofsd() {
    let root = Root::new();
    let share = share_dir();
    let v = volume_arg(share.path(), "/srv", "");
    let mut child = root.spawn(&[
        "run",
        "-v",
        &v,
        "busybox",
        "sh",
        "-c",
        "ls /srv >/dev/null && echo ready; sleep 600",
    ]);
    let stdout = child.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(600)).is_ok();
    let serving = virtiofsd_for(share.path());
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(ready, "the container never started ({status})");
    assert!(!serving.is_empty(), "no virtiofsd served the share");
    let run = Run {
        code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        stdout: String::new(),
        stderr: String::new(),
    };
    assert_no_virtiofsd(share.path(), &run);
    // The killed run could not remove its directory (sockets, logs, disks):
    // the next run sweeps it.
    assert!(!root.leftover_runs().is_empty(), "nothing left to sweep?");
    let next = root.bulkhead(&["run", "busybox", "true"]);
    assert_eq!(next.code, Some(0), "{next:?}");
    root.assert_clean(&next);
}

#[test]
fn a_virtiofsd_that_dies_is_reported_in_one_line() {
    let root = Root::new();
    let share = share_dir();
    let work = tempdir();
    let fake = work.path().join("virtiofsd");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '[2026-01-01T00:00:00Z ERROR virtiofsd] pretend failure' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = volume_arg(share.path(), "/srv", "");
    let run = root.bulkhead_with_env(
        &["run", "-v", &v, "busybox", "true"],
        &[("BULKHEAD_VIRTIOFSD", &fake.display().to_string())],
    );
    assert_eq!(run.code, Some(125), "{run:?}");
    let dir = std::fs::canonicalize(share.path()).unwrap();
    assert_eq!(
        run.stderr.lines().last(),
        Some(
            format!(
                "bulkhead: virtiofsd for {} exited: pretend failure",
                dir.display()
            )
            .as_str()
        ),
        "{run:?}"
    );
    root.assert_clean(&run);
}

/// Every bad mount is one line and exit 125, before any disk or VM.
#[test]
fn bad_mounts_fail_before_any_vm() {
    let root = Root::new();
    let share = share_dir();
    let dir = share.path().display().to_string();
    let file = share.path().join("file");
    std::fs::write(&file, "").unwrap();
    let file = file.display().to_string();
    let missing = format!("{dir}/missing");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["-v".into(), format!("{missing}:/srv")],
            format!("host directory {missing} does not exist"),
        ),
        (
            vec!["-v".into(), "./rel:/srv".into()],
            "./rel is a relative path: bind mounts need an absolute host path".into(),
        ),
        (
            vec!["--mount".into(), "type=bind,src=~/x,dst=/srv".into()],
            "is a relative path".into(),
        ),
        (
            vec!["-v".into(), format!("{file}:/srv")],
            "is not a directory".into(),
        ),
        (
            vec!["-v".into(), format!("{dir}:srv")],
            "must be absolute".into(),
        ),
        (
            vec!["-v".into(), format!("{dir}:/")],
            "must be absolute".into(),
        ),
        (
            vec![
                "-v".into(),
                "data:/srv".into(),
                "--mount".into(),
                format!("type=bind,source={dir},target=/srv/"),
            ],
            "both mount on /srv".into(),
        ),
        (
            vec![
                "--mount".into(),
                format!("type=bind,src={dir},dst=/srv,bind-propagation=rshared"),
            ],
            "bind-propagation is not supported".into(),
        ),
    ];
    for (opts, want) in cases {
        let mut args = vec!["run"];
        args.extend(opts.iter().map(String::as_str));
        args.extend(["busybox", "true"]);
        let run = root.bulkhead(&args);
        assert_eq!(run.code, Some(125), "{opts:?}: {run:?}");
        assert!(run.stderr.contains(&want), "{opts:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{opts:?}: {run:?}");
        assert!(root.leftover_runs().is_empty(), "{opts:?}");
    }

    // No virtiofsd: named, with how to get one, before anything is made.
    let run = root.bulkhead_with_env(
        &["run", "-v", &format!("{dir}:/srv"), "busybox", "true"],
        &[("BULKHEAD_VIRTIOFSD", "/nonexistent/virtiofsd")],
    );
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("/nonexistent/virtiofsd"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(root.leftover_runs().is_empty());
    // Not even the named volume of the clashing mounts was made.
    assert!(!root.path().join("volumes/data.ext4").exists());
}
