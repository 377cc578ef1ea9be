//! The host's defences against a hostile guest, checked from outside: the
//! seccomp filter on every VMM thread (a forbidden syscall kills with
//! SIGSYS), the jail (`/proc` shows the VMM's process in namespaces of its
//! own, pivoted into a root of its own, each thread unprivileged and
//! confined), the VM's host cgroup, a guest fork bomb, a full scratch
//! disk, an image whose links point a volume out of its root, and
//! `kill -9` at random points followed by `gc`. Real VMs
//! restored from the suite's template.

use std::path::Path;

use bulkhead_tests::oci::{busybox_layer, symlink, write_layout};
use bulkhead_tests::{tempdir, Root, Run};

fn ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    // Its VMM (jailed: a process of its own) ended as it said it did.
    assert!(!run.stderr.contains("did not shut down cleanly"), "{run:?}");
}

const PROBE: &str = "BULKHEAD_SECCOMP_PROBE";

#[test]
fn a_forbidden_syscall_on_a_vmm_thread_kills_it_with_sigsys() {
    let root = Root::new();
    // The template is made first, so that the probes hit a restored VM.
    ok(&root.bulkhead(&["run", "--network", "none", "busybox", "true"]));
    let echo = ["run", "--network", "none", "busybox", "echo", "ran"];
    for kind in ["vcpu", "event-loop"] {
        // The jailed VMM dies of it; the run says so and fails.
        let run = root.bulkhead_with_env(&echo, &[(PROBE, kind)]);
        assert_ne!(run.code, Some(0), "{kind}: {run:?}");
        assert!(run.stderr.contains("killed by SIGSYS"), "{kind}: {run:?}");
        assert!(!run.stdout.contains("ran"), "{kind}: {run:?}");
        root.assert_clean(&run);
    }
    // Unjailed, the VMM's threads are the command's own: it dies of it.
    let unjailed = root.bulkhead_with_env(
        &[&["--jail", "off"][..], &echo].concat(),
        &[(PROBE, "vcpu")],
    );
    assert_eq!(unjailed.signal, Some(libc::SIGSYS), "{unjailed:?}");
    // The probe is harmless where no filter stops it.
    let off = root.bulkhead_with_env(
        &[&["--seccomp", "off"][..], &echo].concat(),
        &[(PROBE, "vcpu")],
    );
    ok(&off);
    assert_eq!(off.stdout, "ran\n", "{off:?}");
    // What the killed runs left is swept by the next command.
    ok(&root.bulkhead(&["gc"]));
    assert!(
        root.leftover_runs().is_empty(),
        "{:?}",
        root.leftover_runs()
    );
}

/// A field of a `/proc/…/status` file.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn every_vmm_thread_of_a_running_container_is_confined() {
    let root = Root::new();
    let args = [
        "run",
        "-d",
        "--name",
        "conf",
        "--network",
        "none",
        "busybox",
        "sleep",
        "600",
    ];
    ok(&root.bulkhead(&args));
    let inspect = root.bulkhead(&["inspect", "conf"]);
    ok(&inspect);
    let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
    let pid = v[0]["State"]["Pid"].as_u64().expect("a monitor pid");

    let vmm = jailed_vmm_below(pid).expect("a jailed VMM below the monitor");
    let proc_dir = Path::new("/proc").join(vmm.to_string());

    let mut confined = Vec::new();
    for task in std::fs::read_dir(proc_dir.join("task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        for ids in ["Uid", "Gid"] {
            let ids: Vec<u64> = status_field(&status, ids)
                .split_whitespace()
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(ids.len(), 4, "{comm}: {status}");
            assert!(
                ids.iter().all(|&i| i == ids[0] && i >= 1_000_000),
                "{comm}: {status}"
            );
        }
        assert_eq!(status_field(&status, "Groups"), "", "{comm}: {status}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                status_field(&status, caps),
                "0000000000000000",
                "{comm} {caps}: {status}"
            );
        }
        assert_eq!(status_field(&status, "Seccomp"), "2", "{comm}: {status}");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{comm}: {status}");
        let filters: u32 = status_field(&status, "Seccomp_filters").parse().unwrap();
        assert!(filters >= 1, "{comm}: {status}");
        if comm == "vmm" || comm.starts_with("vcpu") {
            confined.push(comm);
        }
    }
    confined.sort();
    assert_eq!(confined, ["vcpu0", "vmm"], "threads of {vmm}");

    // Its root holds only its VM's files; the host's tree is out of sight.
    let mut root_entries: Vec<String> = std::fs::read_dir(proc_dir.join("root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    root_entries.sort();
    assert_eq!(
        root_entries,
        ["dev", "disk", "snapshot", "vm"],
        "/ of {vmm}"
    );
    let dev: Vec<_> = std::fs::read_dir(proc_dir.join("root/dev"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(dev, ["kvm"], "/dev of {vmm}");
    // Of its run directory, only its sockets: not the plan, the state or
    // the monitor's control socket.
    let vm: Vec<_> = std::fs::read_dir(proc_dir.join("root/vm"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        vm.contains(&"vsock.sock".to_string()),
        "/vm of {vmm}: {vm:?}"
    );
    assert!(
        vm.iter().all(|f| f.starts_with("vsock.sock")),
        "/vm of {vmm}: {vm:?}"
    );
    // Namespaces of its own, and it is PID 1 of its PID namespace.
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let of = |p: &Path| std::fs::read_link(p.join("ns").join(ns)).unwrap();
        assert_ne!(
            of(&proc_dir),
            of(Path::new("/proc/self")),
            "{ns} namespace of {vmm}"
        );
    }
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let nspid = status_field(&status, "NSpid");
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{status}");

    // The VM's process has a host cgroup of its own (where the host lets
    // us make one; on ours it does).
    let cgroups = std::fs::read_to_string(proc_dir.join("cgroup")).unwrap();
    assert!(cgroups.contains("/bulkhead-"), "{cgroups}");
    // Its core would be the guest's memory: it dumps none; and it may
    // hold no more than a VMM's share of files and tasks.
    let limits = std::fs::read_to_string(proc_dir.join("limits")).unwrap();
    let limit = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(limit("Max core file size"), ["0", "0"], "{limits}");
    assert_eq!(limit("Max open files"), ["4096", "4096"], "{limits}");
    assert_eq!(limit("Max processes"), ["256", "256"], "{limits}");
    ok(&root.bulkhead(&["rm", "-f", "conf"]));
}

/// The process below `pid` (its child's child) that runs a vCPU thread.
fn jailed_vmm_below(pid: u64) -> Option<u64> {
    let children = |p: u64| -> Vec<u64> {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten();
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u64>>()
            })
            .collect()
    };
    let mut todo = children(pid);
    while let Some(p) = todo.pop() {
        let has_vcpu = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vcpu"))
            });
        if has_vcpu {
            return Some(p);
        }
        todo.extend(children(p));
    }
    None
}

/// A small xorshift: the campaign's kill points, reproducible from the
/// seed it prints.
struct Points(u64);

impl Points {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// `BULKHEAD_KILL9_ITERATIONS` (default 6) runs killed with SIGKILL at a
/// random point of their life, from the first moment to after the
/// container's exit: during a template build, restore, the agent's
/// setup, the container's run and the teardown. Then one `bulkhead gc`
/// must leave nothing behind, and the named volume and the image store
/// must be intact.
#[test]
fn kill_9_at_random_points_then_gc_leaves_nothing() {
    use bulkhead_tests::leftovers::{dead_vm_cgroups, is_tap, mounts_under, processes_mentioning};
    use std::time::{Duration, Instant};

    let iterations: u64 = std::env::var("BULKHEAD_KILL9_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 campaign: {iterations} iterations, seed {seed}");
    let mut points = Points(seed);
    let root = Root::new();
    let share = bulkhead_tests::tempdir();
    std::fs::write(share.path().join("in"), "from the host").unwrap();
    // How long a whole run takes here, to spread the kill points over it
    // (the second run: the first may have made the suite's template).
    let data = ["run", "-v", "data:/data", "busybox"];
    ok(&root.bulkhead(&[&data[..], &["sh", "-c", "echo 0 > /data/n"]].concat()));
    let started = Instant::now();
    ok(&root.bulkhead(&[&data[..], &["true"]].concat()));
    let span_ms = started.elapsed().as_millis() as u64 + 1000;

    // A template build killed midway: its private templates directory
    // must hold no unfinished build after the sweep.
    let own_templates = bulkhead_tests::tempdir();
    let building = Root::with_templates(own_templates.path());
    let mut child = building.spawn(&["run", "--network", "none", "busybox", "true"]);
    std::thread::sleep(Duration::from_millis(2000 + points.next(8000)));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    ok(&building.bulkhead(&["gc"]));
    let unfinished: Vec<_> = std::fs::read_dir(own_templates.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".build-"))
        .collect();
    assert!(
        unfinished.is_empty(),
        "unfinished template builds left: {unfinished:?}"
    );

    let volume = format!("{}:/share:ro", share.path().display());
    for i in 0..iterations {
        let mut args = vec!["run", "-v", "data:/data"];
        match i % 3 {
            0 => args.extend(["--network", "none"]),
            1 => args.extend(["-v", volume.as_str()]),
            _ => {}
        }
        args.extend([
            "busybox",
            "sh",
            "-c",
            "n=$(cat /data/n); echo $((n+1)) > /data/n.new; mv /data/n.new /data/n; sync; ls /share >/dev/null 2>&1; true",
        ]);
        let at = points.next(span_ms);
        let mut child = root.spawn(&args);
        std::thread::sleep(Duration::from_millis(at));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        eprintln!("iteration {i}: killed at {at} ms of ~{span_ms} ({status})");
    }

    ok(&root.bulkhead(&["gc"]));
    let needle = root.path().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&needle).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left: {:?}",
            processes_mentioning(&needle)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        root.leftover_runs().is_empty(),
        "{:?}",
        root.leftover_runs()
    );
    assert_eq!(mounts_under(root.path()), Vec::<String>::new());
    assert_eq!(dead_vm_cgroups(), Vec::<std::path::PathBuf>::new());
    let (_, links) = root.netns().output(&["ip", "-o", "link", "show"]);
    assert!(!links.lines().any(is_tap), "a TAP is left: {links}");
    let (_, table) = root
        .netns()
        .output(&["nft", "-j", "list", "table", "ip", "bulkhead"]);
    assert!(
        !table.contains("\"elem\""),
        "nft elements are left: {table}"
    );
    let (_, guards) = root
        .netns()
        .output(&["nft", "-j", "list", "table", "bridge", "bulkhead"]);
    assert!(
        !guards.contains("\"rule\""),
        "anti-spoofing rules are left: {guards}"
    );

    // The store still serves its image, the volume's journal is replayed by
    // the run that mounts it, and the volume is then a clean ext4.
    let after = root.bulkhead(&["run", "-v", "data:/data", "busybox", "cat", "/data/n"]);
    ok(&after);
    let n: u64 = after.stdout.trim().parse().unwrap_or(u64::MAX);
    assert!(n <= iterations, "{after:?}");
    let disk = root.path().join("volumes/data.ext4");
    let fsck = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -n {}: {}{}",
        disk.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn a_fork_bomb_stops_at_the_guest_pids_limit() {
    let root = Root::new();
    // The inner shell forks until it cannot and dies of it; the outer one
    // then uses builtins only, as no fork is left to spare.
    let script = "sh -c 'while :; do sleep 300 & done' 2>/dev/null; \
                  read n < /sys/fs/cgroup/pids.current; echo pids=$n; exit 7";
    let run = root.bulkhead(&[
        "run",
        "--network",
        "none",
        "--pids-limit",
        "16",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(run.code, Some(7), "{run:?}");
    let pids: u32 = run
        .stdout
        .trim()
        .strip_prefix("pids=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u32::MAX);
    assert!(pids <= 16, "{run:?}");
    root.assert_clean(&run);
}

#[test]
fn a_full_scratch_disk_is_the_containers_enospc() {
    let root = Root::new();
    // The writable layer is an 8 MiB disk: writing past it fails in the
    // guest, and the shell that saw it still runs and exits as it likes.
    let script = "dd if=/dev/zero of=/fill bs=64k; echo dd=$?; rm /fill && echo freed; exit 3";
    let run = root.bulkhead(&[
        "run",
        "--network",
        "none",
        "--storage-opt",
        "size=8m",
        "busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("No space left on device"), "{run:?}");
    assert!(run.stdout.contains("dd=1\nfreed\n"), "{run:?}");
    assert!(!run.stderr.contains("did not shut down cleanly"), "{run:?}");
    root.assert_clean(&run);
    let bad = root.bulkhead(&["run", "--storage-opt", "size=1m", "busybox", "true"]);
    assert_eq!(bad.code, Some(125), "{bad:?}");
    assert!(bad.stderr.contains("at least 8m"), "{bad:?}");
    root.assert_clean(&bad);
}

#[test]
fn an_images_links_cannot_move_a_volume_out_of_the_containers_root() {
    let root = Root::new();
    let work = tempdir();
    let mut layer = busybox_layer();
    layer.push(symlink("escape", "/"));
    layer.push(symlink("up", "../../../../../../../run"));
    let layout = write_layout(
        &work.path().join("layout"),
        &[layer],
        serde_json::json!({"Env": ["PATH=/bin"]}),
        "links",
    );
    let image = format!("oci:{}:links", layout.display());
    // Followed from the agent, these links would be its own / and /run:
    // the volumes would be mounted there, out of the container's sight,
    // and the files written through them would land in the image's root.
    let run = root.bulkhead(&[
        "run",
        "--network",
        "none",
        "-v",
        "a:/escape/data",
        "-v",
        "b:/up/vol",
        &image,
        "sh",
        "-c",
        "cut -d' ' -f2 /proc/mounts | grep -E '^/(data|run/vol)$'; \
         echo in-a > /escape/data/f; echo in-b > /up/vol/f",
    ]);
    ok(&run);
    assert_eq!(run.stdout, "/data\n/run/vol\n", "{run:?}");
    let run = root.bulkhead(&[
        "run",
        "--network",
        "none",
        "-v",
        "a:/a",
        "-v",
        "b:/b",
        "busybox",
        "cat",
        "/a/f",
        "/b/f",
    ]);
    ok(&run);
    assert_eq!(run.stdout, "in-a\nin-b\n", "{run:?}");
    root.assert_clean(&run);
}
