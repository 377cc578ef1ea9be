//! File I/O through a virtio-fs share next to the same work on an ext4
//! disk (a named volume: ext4 on virtio-blk, as the image's own disk), in
//! the same microVMs: sequential write and read of a 64 MiB file, and
//! `ls -lR` of a tree of 5,000 files. Also what one share adds to a warm
//! `run busybox true`.
//!
//! The tree is made on the host, in the shared directory and in the
//! volume's ext4 image (made from the same directory), since creating
//! 5,000 files from inside a guest takes minutes on a PVM host. Each round
//! is two warm runs, each with the share and the volume: the first writes
//! (with fsync), the second, in a fresh guest whose page cache is cold,
//! reads and lists. The guest times each step with busybox `time` (10 ms
//! resolution) and prints `io: NAME SECONDS`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use bulkhead_rootfs::Store;

use super::programs::{tail, wait_with_timeout};
use super::results::{Results, System, Unit};
use crate::paths;

const FILE_MIB: u32 = 64;
const DIRS: u32 = 50;
const FILES_PER_DIR: u32 = 100;
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Where each kind of storage is mounted in the container.
const TARGETS: [(&str, &str); 2] = [("virtio-fs share", "/share"), ("ext4 disk", "/vol")];

/// The metric of `step` on `storage`.
pub fn metric(storage: &str, step: &str) -> String {
    format!("io {storage}: {step}")
}

pub const WRITE: &str = "write 64 MiB + fsync";
pub const READ: &str = "read 64 MiB, cold guest cache";
pub const LIST: &str = "ls -lR 5000 files, cold guest cache";
pub const RUN_WITH_SHARE: &str = "run true with one share: total";

/// A step of the guest script: times `cmd` and prints `io: <name> <s>`.
fn timed(name: &str, cmd: &str) -> String {
    format!("time -f 'io: {name} %e' sh -c '{cmd} >/dev/null 2>&1' 2>&1\n")
}

fn first_script() -> String {
    let mut s = String::from("set -e\n");
    for (_, dir) in TARGETS {
        s += &timed(
            &format!("{dir}:write"),
            &format!("dd if=/dev/zero of={dir}/big bs=1M count={FILE_MIB} conv=fsync"),
        );
    }
    s
}

fn second_script() -> String {
    let mut s = String::from("set -e\n");
    for (_, dir) in TARGETS {
        s += &timed(
            &format!("{dir}:read"),
            &format!("dd if={dir}/big of=/dev/null bs=1M"),
        );
        s += &timed(&format!("{dir}:list"), &format!("ls -lR {dir}/tree"));
    }
    s
}

/// Runs `rounds` rounds; returns the number of failed rounds.
pub fn run(results: &mut Results, exe: &Path, image: &str, scratch: &Path, rounds: u32) -> u32 {
    let mut failures = 0;
    for round in 1..=rounds {
        let tag = format!("[io {round}/{rounds}]");
        match one_round(results, exe, image, scratch, round) {
            Ok(line) => eprintln!("bench: {tag} {line}"),
            Err(e) => {
                eprintln!("bench: {tag} FAILED: {e:#}");
                failures += 1;
            }
        }
    }
    failures
}

fn one_round(
    results: &mut Results,
    exe: &Path,
    image: &str,
    scratch: &Path,
    round: u32,
) -> anyhow::Result<String> {
    let share = scratch.join(format!("share-{round}"));
    let volume = format!("bench-io-{}-{round}", std::process::id());
    let outcome = (|| {
        make_tree(&share)?;
        let store = Store::open(paths::root()).context("cannot open the image store")?;
        let disk = store.volumes().path(&volume)?;
        bulkhead_rootfs::ext4_from_dir(&share, &disk, false)
            .context("cannot make the volume holding the tree")?;
        let mounts = [
            format!("{}:/share", share.display()),
            format!("{volume}:/vol"),
        ];
        let first = run_script(exe, image, &mounts, &first_script())?;
        let second = run_script(exe, image, &mounts, &second_script())?;
        let bare = run_timed(exe, image, &[])?;
        let with_share = run_timed(exe, image, &mounts[..1])?;
        Ok::<_, anyhow::Error>((first, second, bare, with_share))
    })();
    let _ = std::fs::remove_dir_all(&share);
    if let Ok(store) = Store::open(paths::root()) {
        let _ = store.remove_volume(&volume);
    }
    let (first, second, bare, with_share) = outcome?;
    let mut line = String::new();
    for (storage, dir) in TARGETS {
        for (step, key, out) in [
            (WRITE, "write", &first),
            (READ, "read", &second),
            (LIST, "list", &second),
        ] {
            let secs = seconds(out, &format!("{dir}:{key}"))?;
            results.record(
                System::BulkheadWarm,
                &metric(storage, step),
                Unit::Ms,
                secs * 1e3,
            );
            line += &format!("{dir} {key} {:.0} ms, ", secs * 1e3);
        }
    }
    results.record(System::BulkheadWarm, RUN_WITH_SHARE, Unit::Ms, with_share);
    results.record(
        System::BulkheadWarm,
        "run true without shares: total",
        Unit::Ms,
        bare,
    );
    line += &format!("run true {bare:.0} ms, with a share {with_share:.0} ms");
    Ok(line)
}

/// `dir/tree/D/F` for D in 1..=DIRS and F in 1..=FILES_PER_DIR, empty.
fn make_tree(dir: &Path) -> anyhow::Result<()> {
    for d in 1..=DIRS {
        let sub = dir.join("tree").join(d.to_string());
        std::fs::create_dir_all(&sub)
            .with_context(|| format!("cannot create {}", sub.display()))?;
        for f in 1..=FILES_PER_DIR {
            let file = sub.join(f.to_string());
            std::fs::write(&file, b"")
                .with_context(|| format!("cannot create {}", file.display()))?;
        }
    }
    Ok(())
}

fn run_command(exe: &Path, image: &str, mounts: &[String], args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--network", "none"]);
    for m in mounts {
        cmd.arg("-v").arg(m);
    }
    cmd.arg(image)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The script's stdout.
fn run_script(exe: &Path, image: &str, mounts: &[String], script: &str) -> anyhow::Result<String> {
    let child = run_command(exe, image, mounts, &["sh", "-c", script])
        .spawn()
        .context("cannot start `bulkhead run`")?;
    let out = wait_with_timeout(child, RUN_TIMEOUT).context("`bulkhead run`")?;
    if !out.status.success() {
        bail!(
            "`bulkhead run` failed ({}):\n{}{}",
            out.status,
            tail(&out.stdout, 10),
            tail(&out.stderr, 10)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Milliseconds from start to exit of `bulkhead run IMAGE true`.
fn run_timed(exe: &Path, image: &str, mounts: &[String]) -> anyhow::Result<f64> {
    let began = std::time::Instant::now();
    run_script(exe, image, mounts, "true")?;
    Ok(began.elapsed().as_secs_f64() * 1e3)
}

/// The seconds the guest printed for `name`.
fn seconds(out: &str, name: &str) -> anyhow::Result<f64> {
    let prefix = format!("io: {name} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| {
            format!(
                "the guest did not time {name}: {}",
                tail(out.as_bytes(), 10)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_time_every_step_on_both_storages() {
        let (first, second) = (first_script(), second_script());
        for dir in ["/share", "/vol"] {
            assert!(first.contains(&format!("io: {dir}:write %e")), "{first}");
            for key in ["read", "list"] {
                assert!(second.contains(&format!("io: {dir}:{key} %e")), "{second}");
            }
        }
        assert_eq!(
            seconds("x\nio: /vol:read 1.25\n", "/vol:read").unwrap(),
            1.25
        );
        assert!(seconds("io: /vol:read\n", "/vol:read").is_err());
    }
}
