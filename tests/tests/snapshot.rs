//! Snapshot and restore of a real guest through `bulkhead boot
//! --snapshot-to` and `bulkhead restore`: the guest continues exactly where
//! it was, vsock works both ways after the restore, and a damaged
//! snapshot is refused with one line naming the problem.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;

use bulkhead_tests::vsock::{echo_through_guest, serve_guest_connection};
use bulkhead_tests::{bulkhead, kernel, spawn_bulkhead, static_c_binary, tempdir, VM_TIMEOUT};

// Must match tests/fixtures/snapshot_init.c.
const SNAPSHOT_LINE: &str = "snapshot-init: snapshot now";
const COUNT_TO: u32 = 12;
const GUEST_LISTEN_PORT: u32 = 6000;
const HOST_LISTEN_PORT: u32 = 5000;

/// The numbers of the "count N" lines, in order.
fn counts(console: &str) -> Vec<u32> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn snapshot_guest(dir: &Path) -> (std::path::PathBuf, String) {
    let init = static_c_binary("snapshot_init", dir);
    let initrd = dir.join("initramfs.cpio");
    bulkhead_rootfs::initramfs::build_initramfs(&init, &[], &initrd).unwrap();
    let snap = dir.join("snap");
    let uds = dir.join("boot.sock");
    let k = kernel().display().to_string();
    let vm = spawn_bulkhead(&[
        "boot",
        "--kernel",
        &k,
        "--initrd",
        &initrd.display().to_string(),
        "--vsock-uds",
        &uds.display().to_string(),
        "--snapshot-to",
        &snap.display().to_string(),
        "--snapshot-when",
        SNAPSHOT_LINE,
    ]);
    let run = vm.wait_timeout(VM_TIMEOUT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("snapshot written"), "{run:?}");
    assert!(snap.join("state").is_file() && snap.join("memory").is_file());
    (snap, run.stdout)
}

#[test]
fn restored_guest_continues_exactly_and_vsock_works_both_ways() {
    let dir = tempdir();
    let (snap, before) = snapshot_guest(dir.path());
    let seen = counts(&before);
    assert!(
        seen.len() >= 3 && seen.len() < COUNT_TO as usize,
        "{before}"
    );

    let uds = dir.path().join("restored.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_LISTEN_PORT}", uds.display())).unwrap();
    let guest_side = thread::spawn(move || serve_guest_connection(listener));
    let mut vm = spawn_bulkhead(&[
        "restore",
        &snap.display().to_string(),
        "--vsock-uds",
        &uds.display().to_string(),
    ]);
    let payload: Vec<u8> = (0..256u32 << 10).map(|i| (i * 7 + 3) as u8).collect();
    let echo = echo_through_guest(&mut vm, &uds, GUEST_LISTEN_PORT, &payload);
    let guest_line = guest_side.join().unwrap();
    let run = vm.wait_timeout(VM_TIMEOUT);
    let (_, echoed) = echo.unwrap_or_else(|e| panic!("{e}: {run:?}"));
    assert_eq!(run.code, Some(0), "{run:?}");

    // The console before and after the snapshot is one unbroken stream.
    let all = format!("{before}{}", run.stdout);
    assert_eq!(counts(&all), (1..=COUNT_TO).collect::<Vec<_>>(), "{all}");
    assert!(
        counts(&run.stdout).len() >= COUNT_TO as usize - seen.len() - 1,
        "the restored guest did not count on: {run:?}"
    );
    assert_eq!(
        guest_line.expect("guest connection"),
        "ping after restore\n"
    );
    assert!(
        run.stdout
            .contains("snapshot-init: host replied: pong from host"),
        "{run:?}"
    );
    assert!(
        echoed == payload,
        "echo differs after {} bytes: {run:?}",
        echoed.len()
    );
    assert!(run.stdout.contains("snapshot-init: done"), "{run:?}");
}

#[test]
fn damaged_snapshots_are_refused_with_one_line() {
    let dir = tempdir();
    let (snap, _) = snapshot_guest(dir.path());
    let state = std::fs::read(snap.join("state")).unwrap();
    let memory_len = std::fs::metadata(snap.join("memory")).unwrap().len();
    let restore = |what: &str| {
        let run = bulkhead(&["restore", &snap.display().to_string()]);
        assert_eq!(run.code, Some(1), "{what}: {run:?}");
        let lines: Vec<_> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{what}: {run:?}");
        run.stderr
    };

    let mut flipped = state.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    std::fs::write(snap.join("state"), &flipped).unwrap();
    assert!(restore("flipped byte").contains("checksum"));

    std::fs::write(snap.join("state"), &state[..state.len() - 9]).unwrap();
    assert!(restore("truncated").contains("truncated"));

    let mut other_version = state.clone();
    other_version[8] = 0x7f;
    std::fs::write(snap.join("state"), &other_version).unwrap();
    assert!(restore("version").contains("format version 127"));

    std::fs::write(snap.join("state"), &state).unwrap();
    let memory = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("memory"))
        .unwrap();
    memory.set_len(memory_len / 2).unwrap();
    assert!(restore("short memory").contains("memory file"));

    std::fs::remove_file(snap.join("state")).unwrap();
    assert!(restore("missing").contains("state"));
}
