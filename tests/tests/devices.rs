//! virtio devices seen from a real guest: an ext4 root on virtio-blk, a
//! data disk whose writes reach the host file, a read-only disk, hybrid
//! vsock in both directions, and broken device options failing cleanly.
//!
//! Boots are expensive here (~30 s each), so one VM checks all the disks
//! and one VM both vsock directions.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use bulkhead_tests::vsock::{echo_through_guest, serve_guest_connection};
use bulkhead_tests::{
    bulkhead, kernel, mkfs_ext4, spawn_bulkhead, static_c_binary, tempdir, Run, VM_TIMEOUT,
};

// Must match tests/fixtures/disk_init.c.
const SEED_OFFSET: usize = 3 * 1024 * 1024 + 512;
const WRITE_OFFSET: usize = 5 * 1024 * 1024 + 4096;
const WRITE_LEN: usize = 4096;
const DATA_DISK_LEN: usize = 8 << 20;

// Must match tests/fixtures/vsock_init.c.
const GUEST_LISTEN_PORT: u32 = 6000;
const HOST_LISTEN_PORT: u32 = 5000;

fn kernel_str() -> String {
    kernel().display().to_string()
}

fn assert_line(run: &Run, line: &str) {
    assert!(
        run.stdout.lines().any(|l| l == line),
        "expected line {line:?}: {run:?}"
    );
}

/// The error output is one line naming the problem.
fn assert_one_line_error(run: &Run, needle: &str) {
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.code.is_some(), "killed by a signal: {run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line: {run:?}");
    assert!(lines[0].starts_with("bulkhead: "), "{run:?}");
    assert!(lines[0].contains(needle), "expected {needle:?}: {run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

fn seed_pattern() -> Vec<u8> {
    (0..512).map(|i| ((i * 7 + 3) & 0xff) as u8).collect()
}

fn guest_write_pattern() -> Vec<u8> {
    (0..WRITE_LEN)
        .map(|i| ((i * 13 + 5) & 0xff) as u8)
        .collect()
}

/// FNV-1a, as disk_init.c prints it.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(2_166_136_261u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

/// An ext4 root holding `init` as /sbin/init and `message` in /etc/message.
fn root_disk(dir: &Path, init: &Path, message: &str) -> PathBuf {
    let tree = dir.join("root");
    for sub in ["sbin", "dev", "proc", "etc"] {
        std::fs::create_dir_all(tree.join(sub)).unwrap();
    }
    std::fs::copy(init, tree.join("sbin/init")).unwrap();
    std::fs::write(tree.join("etc/message"), message).unwrap();
    let image = dir.join("root.ext4");
    mkfs_ext4(&tree, &image, 16);
    image
}

#[test]
fn root_data_and_read_only_disks() {
    let dir = tempdir();
    let message = "hello from the root disk 5f3a";
    let init = static_c_binary("disk_init", dir.path());
    let root = root_disk(dir.path(), &init, message);

    let data = dir.path().join("data.img");
    let mut expected = vec![0u8; DATA_DISK_LEN];
    expected[SEED_OFFSET..SEED_OFFSET + 512].copy_from_slice(&seed_pattern());
    std::fs::write(&data, &expected).unwrap();
    expected[WRITE_OFFSET..WRITE_OFFSET + WRITE_LEN].copy_from_slice(&guest_write_pattern());

    let ro = dir.path().join("ro.img");
    let ro_contents = vec![0x5au8; 1 << 20];
    std::fs::write(&ro, &ro_contents).unwrap();

    let run = spawn_bulkhead(&[
        "boot".to_string(),
        "--kernel".into(),
        kernel_str(),
        "--disk".into(),
        root.display().to_string(),
        "--disk".into(),
        data.display().to_string(),
        "--disk".into(),
        format!("{},ro", ro.display()),
        "--cmdline".into(),
        "root=/dev/vda".into(),
    ])
    .wait_timeout(VM_TIMEOUT);

    assert_eq!(run.code, Some(0), "{run:?}");
    // Root from disk: /etc/message exists only in the ext4 image.
    assert_line(&run, &format!("disk-init: message: {message}"));
    // Data disk: the guest sees the host file's size and bytes, and its
    // write reaches the host file and nothing else changes.
    assert_line(&run, &format!("disk-init: vdb size {DATA_DISK_LEN}"));
    assert_line(
        &run,
        &format!("disk-init: vdb seed fnv {:08x}", fnv1a(&seed_pattern())),
    );
    assert_line(&run, "disk-init: vdb write ok");
    let after = std::fs::read(&data).unwrap();
    assert_eq!(after.len(), DATA_DISK_LEN, "{run:?}");
    assert!(
        after[WRITE_OFFSET..WRITE_OFFSET + WRITE_LEN] == guest_write_pattern()[..],
        "guest write missing from the host file: {run:?}"
    );
    assert!(after == expected, "bytes outside the guest write changed");
    // Read-only disk: readable, flagged read-only, writes refused, file intact.
    assert_line(&run, "disk-init: vdc ro 1");
    assert_line(&run, "disk-init: vdc first byte 5a");
    let refused = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("disk-init: vdc write refused: "))
        .unwrap_or_else(|| panic!("write to the read-only disk was not refused: {run:?}"));
    assert!(
        ["EPERM", "EROFS", "EIO", "EACCES"].contains(&refused),
        "unexpected error {refused}: {run:?}"
    );
    assert!(
        std::fs::read(&ro).unwrap() == ro_contents,
        "read-only disk changed"
    );
    assert_line(&run, "disk-init: done");
}

#[test]
fn vsock_both_directions() {
    let dir = tempdir();
    let init = static_c_binary("vsock_init", dir.path());
    let initrd = dir.path().join("initramfs.cpio");
    bulkhead_rootfs::initramfs::build_initramfs(&init, &[], &initrd).unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_LISTEN_PORT}", uds.display())).unwrap();
    let guest_side = thread::spawn(move || serve_guest_connection(listener));

    let mut vm = spawn_bulkhead(&[
        "boot".to_string(),
        "--kernel".into(),
        kernel_str(),
        "--initrd".into(),
        initrd.display().to_string(),
        "--vsock-uds".into(),
        uds.display().to_string(),
    ]);

    // Host-initiated: 1 MiB through the guest's echo, far more than the
    // guest's 256 KiB receive buffer, so credit flow control must work.
    let payload: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let echo = echo_through_guest(&mut vm, &uds, GUEST_LISTEN_PORT, &payload);
    let (ok, echoed) = match echo {
        Ok(echo) => echo,
        Err(e) => panic!("{e}: {:?}", vm.wait_timeout(VM_TIMEOUT)),
    };
    let guest_line = guest_side.join().unwrap();
    let run = vm.wait_timeout(VM_TIMEOUT);

    let host_port = ok.strip_prefix("OK ").and_then(|p| p.parse::<u32>().ok());
    assert!(host_port.is_some(), "bad CONNECT reply {ok:?}: {run:?}");
    assert_eq!(run.code, Some(0), "{run:?}");
    // Guest-initiated: both sides saw the other's line.
    match guest_line {
        Ok(line) => assert_eq!(line, "ping from guest\n", "{run:?}"),
        Err(e) => panic!("guest never connected to the host: {e}: {run:?}"),
    }
    assert_line(&run, "vsock-init: host replied: pong from host");
    assert_line(&run, "vsock-init: accepted host connection");
    assert_eq!(echoed.len(), payload.len(), "{run:?}");
    assert!(echoed == payload, "echoed bytes differ: {run:?}");
    assert_line(&run, &format!("vsock-init: echoed {} bytes", payload.len()));
    assert_line(&run, "vsock-init: done");
}

#[test]
fn broken_device_options_fail_cleanly() {
    let k = kernel_str();
    let run = bulkhead(&["boot", "--kernel", &k, "--disk", "/nonexistent.img"]);
    assert_one_line_error(&run, "/nonexistent.img");

    let dir = tempdir();
    let d = dir.path().display().to_string();
    let run = bulkhead(&["boot", "--kernel", &k, "--disk", &format!("{d},ro")]);
    assert_one_line_error(&run, &format!("disk image {d} is not a regular file"));

    let run = bulkhead(&["boot", "--kernel", &k, "--disk", "/tmp/x.img,rx"]);
    assert_one_line_error(&run, "unknown option");

    let uds = "/nonexistent/dir/v.sock";
    let run = bulkhead(&["boot", "--kernel", &k, "--vsock-uds", uds]);
    assert_one_line_error(&run, uds);
}

/// Device figures, not a pass/fail test: guest sequential read throughput
/// of a 64 MiB disk and vsock round trips. Run with
/// `cargo test -p bulkhead-tests --test devices -- --ignored --nocapture`.
#[test]
#[ignore]
fn device_figures() {
    const ROUND_TRIPS: usize = 1000;
    const MSG_LEN: usize = 64;
    const BULK_LEN: usize = 8 << 20;

    let dir = tempdir();
    let init = static_c_binary("bench_init", dir.path());
    let initrd = dir.path().join("initramfs.cpio");
    bulkhead_rootfs::initramfs::build_initramfs(&init, &[], &initrd).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0xa5u8; 64 << 20]).unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_5001", uds.display())).unwrap();
    let host = thread::spawn(move || -> std::io::Result<(Duration, Duration)> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(VM_TIMEOUT))?;
        let mut msg = [0u8; MSG_LEN];
        s.read_exact(&mut msg)?;
        let start = Instant::now();
        s.write_all(&msg)?;
        for _ in 1..ROUND_TRIPS {
            s.read_exact(&mut msg)?;
            s.write_all(&msg)?;
        }
        let echo = start.elapsed();
        let mut bulk = vec![0u8; BULK_LEN];
        let start = Instant::now();
        s.read_exact(&mut bulk)?;
        let bulk_time = start.elapsed();
        s.write_all(b"k")?;
        Ok((echo, bulk_time))
    });

    let run = spawn_bulkhead(&[
        "boot".to_string(),
        "--kernel".into(),
        kernel_str(),
        "--initrd".into(),
        initrd.display().to_string(),
        "--mem-mib".into(),
        "256".into(),
        "--disk".into(),
        format!("{},ro", disk.display()),
        "--vsock-uds".into(),
        uds.display().to_string(),
    ])
    .wait_timeout(Duration::from_secs(1800));
    assert_eq!(run.code, Some(0), "{run:?}");
    let (host_echo, host_bulk) = host.join().unwrap().expect("host side of the bench");

    let field = |line: &str, name: &str| -> f64 {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name);
        words
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    for line in run.stdout.lines().filter(|l| l.starts_with("bench: ")) {
        println!("{line}");
        if line.starts_with("bench: disk ") {
            let mb_s = field(line, "bytes") / 1e6 / (field(line, "ns") / 1e9);
            println!("  => {mb_s:.1} MB/s");
        } else if line.starts_with("bench: vsock round trips ") {
            let us = field(line, "ns") / 1e3 / field(line, "trips");
            println!("  => {us:.1} µs per round trip (guest clock)");
        } else if line.starts_with("bench: pipe round trips ") {
            let us = field(line, "ns") / 1e3 / field(line, "trips");
            println!("  => {us:.1} µs per round trip between two guest processes");
        } else if line.starts_with("bench: getppid ") {
            let us = field(line, "ns") / 1e3 / field(line, "calls");
            println!("  => {us:.1} µs per guest syscall");
        } else if line.starts_with("bench: vsock bulk ") {
            let mb_s = field(line, "bytes") / 1e6 / (field(line, "ns") / 1e9);
            println!("  => {mb_s:.1} MB/s guest to host");
        }
    }
    println!(
        "host clock: {:.1} µs per round trip, {:.1} MB/s bulk",
        host_echo.as_secs_f64() * 1e6 / (ROUND_TRIPS - 1) as f64,
        BULK_LEN as f64 / 1e6 / host_bulk.as_secs_f64()
    );
    assert!(run.stdout.contains("bench: done"), "{run:?}");
}
