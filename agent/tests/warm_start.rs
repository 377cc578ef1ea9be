//! The agent's side of warm start on the host: Refresh, the step table,
//! init setup failures after the vfork-style spawn, Shutdown flushing only
//! the volumes, and disks that are block devices.

mod support;

use std::process::Command;
use std::time::Duration;

use bulkhead_protocol::{
    read_message, write_message, AgentMessage, Event, HostMessage, ProtocolError, Rlimit,
    RlimitKind, Source, Volume,
};
use support::{can_run, Agent};

#[test]
fn refresh_is_answered_before_a_container_and_refused_after() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut c = agent.connect();
    // A host run checks the values but leaves the host's RNG, clock and
    // name alone.
    let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    c.refresh(&[7; 32], 1_700_000_000_000_000_000, Some("clone-1"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        before
    );
    match c.refresh(&[], 1, None) {
        Err(ProtocolError::Agent(m)) => assert!(m.contains("entropy"), "{m}"),
        other => panic!("{other:?}"),
    }
    match c.refresh(&[1], 1, Some(&"h".repeat(65))) {
        Err(ProtocolError::Agent(m)) => assert!(m.contains("hostname"), "{m}"),
        other => panic!("{other:?}"),
    }
    c.create(&agent.spec(&["true"])).unwrap();
    match c.refresh(&[1; 16], 1, None) {
        Err(ProtocolError::Agent(m)) => assert!(m.contains("before any container"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Before Hello it is refused like anything else (on a new connection:
    // the agent serves one at a time).
    drop(c);
    let mut s = agent.connect_raw();
    write_message(
        &mut s,
        &HostMessage::Refresh {
            entropy: vec![1],
            realtime_ns: 0,
            hostname: None,
        },
    )
    .unwrap();
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut s).unwrap(),
        AgentMessage::Error { .. }
    ));
}

#[test]
fn every_step_is_reported_in_order() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut c = agent.connect();
    c.create(&agent.spec(&["sh", "-c", "echo hi"])).unwrap();
    let started = c.start_traced().unwrap();
    let names: Vec<&str> = started.steps.iter().map(|s| s.name.as_str()).collect();
    let cgroups = support::cgroup_root().is_some();
    let mut expected = vec!["plan"];
    if cgroups {
        expected.push("cgroup");
    }
    // Directory lower and scratch: only the overlay is mounted.
    expected.extend(["mount:rootfs", "prepare", "clone"]);
    if cgroups {
        expected.push("init:cgroup");
    }
    // The network namespace is joined (or set up) before /sys is mounted.
    expected.extend([
        "init:net",
        "init:mounts",
        "init:pivot",
        "init:creds",
        "exec",
        "report",
    ]);
    assert_eq!(names, expected);
    assert!(
        started.steps.iter().all(|s| s.ns > 0),
        "{:?}",
        started.steps
    );
    // The init shares the agent's pages: its setup takes hardly any faults
    // (a fork would COW-fault the agent's heap and stack).
    let init_faults: u64 = started
        .steps
        .iter()
        .filter(|s| s.name.starts_with("init:"))
        .map(|s| s.faults)
        .sum();
    assert!(init_faults < 64, "{:?}", started.steps);

    c.wait().unwrap();
    let steps = loop {
        match c.next_event_with_steps().unwrap() {
            (Event::Exit(status), steps) => {
                assert_eq!(status.code(), 0);
                break steps;
            }
            (Event::Stdout(d), _) => assert_eq!(d, b"hi\n"),
            other => panic!("{other:?}"),
        }
    };
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["wait", "drain"]);
}

#[test]
fn init_setup_failures_are_named_in_the_start_reply() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut spec = agent.spec(&["true"]);
    // Above fs.nr_open: the kernel refuses it even to root.
    spec.process.rlimits = vec![Rlimit {
        kind: RlimitKind::RlimitNofile,
        soft: 1 << 40,
        hard: 1 << 40,
    }];
    c.create(&spec).unwrap();
    match c.start() {
        Err(ProtocolError::Agent(m)) => {
            assert!(m.contains("RlimitNofile"), "{m}");
            assert!(m.contains("Operation not permitted"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // The failed container is gone and the agent goes on.
    let (out, c) = support::run_on(c, &agent.spec(&["echo", "next"]), b"");
    assert_eq!(out.stdout, "next\n");
    drop(c);

    let mut spec = agent.spec(&["pwd"]);
    spec.process.cwd = "/made/on/demand".into();
    let out = support::run(&agent, &spec, b"");
    assert_eq!(out.stdout, "/made/on/demand\n", "{}", out.stderr);
}

#[test]
fn shutdown_flushes_the_volumes_of_a_running_container() {
    require!(can_run(), "environment");
    let mut agent = Agent::start();
    let vol = support::TempDir::new("flush");
    let mut spec = agent.spec(&["sh", "-c", "echo kept > /data/f; echo ready; sleep 1000"]);
    spec.storage.volumes = vec![Volume {
        source: Source::directory(vol.path().display().to_string()),
        destination: "/data".into(),
        read_only: false,
        subpath: None,
        options: Vec::new(),
    }];
    let mut c = agent.connect();
    c.create(&spec).unwrap();
    c.start().unwrap();
    match c.next_event().unwrap() {
        Event::Stdout(d) => assert_eq!(d, b"ready\n"),
        other => panic!("{other:?}"),
    }
    c.shutdown().unwrap();
    assert_eq!(
        std::fs::read_to_string(vol.path().join("f")).unwrap(),
        "kept\n"
    );
    drop(c);
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
    // A host agent still cleans up after itself.
    let state = agent.dir.path().join("state");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}

/// A loop device over a fresh ext4 file; detached on drop.
struct LoopDisk(String);

impl LoopDisk {
    fn new(dir: &std::path::Path) -> Option<LoopDisk> {
        let file = dir.join("disk.ext4");
        std::fs::File::create(&file).ok()?.set_len(16 << 20).ok()?;
        let mkfs = Command::new("/usr/sbin/mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&file)
            .status()
            .ok()?;
        if !mkfs.success() {
            return None;
        }
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&file)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| LoopDisk(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn block_device_volumes_are_awaited_mounted_and_flushed() {
    require!(can_run(), "environment");
    let dir = support::TempDir::new("loop");
    let Some(disk) = LoopDisk::new(dir.path()) else {
        eprintln!("skipped: cannot set up a loop device");
        return;
    };
    let agent = Agent::start();
    let mut spec = agent.spec(&["sh", "-c", "echo on-disk > /data/f; cat /data/f"]);
    spec.storage.volumes = vec![Volume {
        source: Source::block_device(disk.0.clone()),
        destination: "/data".into(),
        read_only: false,
        subpath: None,
        options: Vec::new(),
    }];
    let mut c = agent.connect();
    c.create(&spec).unwrap();
    let started = c.start_traced().unwrap();
    let dev = std::path::Path::new(&disk.0)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let names: Vec<&str> = started.steps.iter().map(|s| s.name.as_str()).collect();
    let wait = names.iter().position(|n| *n == format!("disk:{dev}"));
    let mount = names.iter().position(|n| *n == "mount:volume0");
    assert!(wait.is_some() && wait < mount, "{names:?}");
    c.wait().unwrap();
    loop {
        match c.next_event().unwrap() {
            Event::Exit(s) => {
                assert_eq!(s.code(), 0);
                break;
            }
            Event::Stdout(d) => assert_eq!(d, b"on-disk\n"),
            other => panic!("{other:?}"),
        }
    }
    c.shutdown().unwrap();
}
