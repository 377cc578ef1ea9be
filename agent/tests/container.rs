//! End-to-end tests of the agent on the host: the real binary, real
//! namespaces, overlay and cgroups, driven through the protocol client.
//! They need root and /bin/busybox, and skip (pass with a note) otherwise.

mod support;

use std::io::Write;
use std::time::Duration;

use bulkhead_protocol::{
    read_message, write_message, AgentMessage, Event, HostMessage, ProtocolError, Source,
    Termination, TtySize, User, Volume, PROTOCOL_VERSION,
};
use support::{can_run, controllers, deny_filter, run, run_on, Agent};

#[test]
fn captures_stdout_and_exit_code() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let out = run(&agent, &agent.spec(&["echo", "hello", "world"]), b"");
    assert_eq!(out.stdout, "hello world\n");
    assert_eq!(out.stderr, "");
    assert_eq!(out.status.termination, Termination::Exited { code: 0 });
    assert!(!out.status.oom_killed);
}

#[test]
fn separates_stderr_and_reports_nonzero_exit() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let out = run(
        &agent,
        &agent.spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        b"",
    );
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.code(), 3);
}

#[test]
fn missing_command_exits_127() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let out = run(&agent, &agent.spec(&["no-such-command"]), b"");
    assert_eq!(out.code(), 127);
    assert!(
        out.stderr.contains("executable file not found"),
        "{}",
        out.stderr
    );
    let out = run(&agent, &agent.spec(&["/bin/no-such-file"]), b"");
    assert_eq!(out.code(), 127);
}

#[test]
fn unexecutable_file_exits_126() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let out = run(&agent, &agent.spec(&["/etc/not-executable"]), b"");
    assert_eq!(out.code(), 126);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    let out = run(&agent, &agent.spec(&["/etc"]), b"");
    assert_eq!(out.code(), 126);
}

#[test]
fn env_cwd_hostname_and_pid_namespace() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "echo $FOO; pwd; hostname; echo $$; echo $HOME; echo $PATH",
    ]);
    spec.process.env = vec!["FOO=bar baz".into()];
    spec.process.cwd = "/work/dir".into();
    spec.hostname = Some("box".into());
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "bar baz",
            "/work/dir",
            "box",
            "1",
            "/root",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
}

#[test]
fn pipes_stdin_through() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    // More than a pipe buffer, so the agent must buffer and flush.
    let input: Vec<u8> = (0..300_000u32)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[(i % 27) as usize])
        .collect();
    let out = run(&agent, &agent.spec(&["cat"]), &input);
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout.as_bytes(), &input[..]);

    let out = run(&agent, &agent.spec(&["wc", "-c"]), b"12345");
    assert_eq!(out.stdout.trim(), "5");
}

#[test]
fn isolation_mounts_and_network() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let script = "ls /dev | tr '\\n' ' '; echo; \
                  mount | grep -c ' on / type overlay'; \
                  touch /sys/x 2>/dev/null && echo sys-rw || echo sys-ro; \
                  ip link show lo | grep -c UP; \
                  ip link | grep -c '^[0-9]'; \
                  readlink /dev/ptmx; \
                  ps -o pid | wc -l";
    let out = run(&agent, &agent.spec(&["sh", "-c", script]), b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd", "mqueue",
    ] {
        assert!(
            lines[0].split(' ').any(|d| d == dev),
            "missing /dev/{dev}: {}",
            lines[0]
        );
    }
    assert_eq!(lines[1], "1", "root is the overlay");
    assert_eq!(lines[2], "sys-ro");
    assert_eq!(lines[3], "1", "lo is up");
    assert_eq!(lines[4], "1", "only lo in the network namespace");
    assert_eq!(lines[5], "pts/ptmx");
    // Header + sh + ps (+ wc): only the container's processes are visible.
    assert!(lines[6].trim().parse::<u32>().unwrap() <= 4, "{}", lines[6]);
}

#[test]
fn writes_go_to_the_scratch_layer() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let spec = agent.spec(&["sh", "-c", "echo data > /root/file && rm /etc/group"]);
    let scratch = spec.storage.scratch.clone().unwrap();
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let upper = std::path::Path::new(scratch.path().unwrap()).join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("root/file")).unwrap(),
        "data\n"
    );
    // The image itself is untouched.
    assert!(agent.image().join("etc/group").exists());
    assert!(!agent.image().join("root/file").exists());
}

#[test]
fn tmpfs_scratch_when_no_scratch_disk() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "echo x > /tmp/f && cat /tmp/f && mount | grep -c overlay",
    ]);
    spec.storage.scratch = None;
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "x\n1\n");
}

#[test]
fn volumes_read_write_and_read_only() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let rw = support::TempDir::new("vol-rw");
    let ro = support::TempDir::new("vol-ro");
    std::fs::write(ro.path().join("seed"), "seed\n").unwrap();
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "echo written > /data/out; cat /config/seed; \
         touch /config/new 2>/dev/null && echo ro-broken || echo ro-ok",
    ]);
    spec.storage.volumes = vec![
        Volume {
            source: Source::directory(rw.path().display().to_string()),
            destination: "/data".into(),
            read_only: false,
            subpath: None,
            options: Vec::new(),
        },
        Volume {
            source: Source::directory(ro.path().display().to_string()),
            destination: "/config".into(),
            read_only: true,
            subpath: None,
            options: Vec::new(),
        },
    ];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "seed\nro-ok\n");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out")).unwrap(),
        "written\n"
    );
    assert!(!ro.path().join("new").exists());
}

#[test]
fn default_capabilities_and_user() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let script = "grep -E '^Cap(Bnd|Eff|Inh|Amb)' /proc/self/status | tr -s '\\t' ' '; id";
    let out = run(&agent, &agent.spec(&["sh", "-c", script]), b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // Docker's default set: 0xa80425fb.
    assert!(
        out.stdout.contains("CapBnd: 00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapEff: 00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapInh: 0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapAmb: 0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("uid=0(root) gid=0(root)"),
        "{}",
        out.stdout
    );

    let mut spec = agent.spec(&["sh", "-c", script]);
    spec.process.user = User::Name {
        name: "nobody".into(),
    };
    spec.process.no_new_privileges = true;
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("CapBnd: 00000000a80425fb"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CapEff: 0000000000000000"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("uid=65534(nobody) gid=65534(nogroup) groups=50(staff)"),
        "{}",
        out.stdout
    );

    let mut spec = agent.spec(&["sh", "-c", "grep NoNewPrivs /proc/self/status; ulimit -n"]);
    spec.process.no_new_privileges = true;
    spec.process.capabilities = Some(vec!["CAP_KILL".into()]);
    spec.process.rlimits = vec![bulkhead_protocol::Rlimit {
        kind: bulkhead_protocol::RlimitKind::RlimitNofile,
        soft: 123,
        hard: 456,
    }];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "NoNewPrivs:\t1\n123\n");
}

#[test]
fn unknown_user_fails_create() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&["true"]);
    spec.process.user = User::Name {
        name: "ghost".into(),
    };
    let mut c = agent.connect();
    match c.create(&spec) {
        Err(ProtocolError::Agent(m)) => assert!(m.contains("ghost"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The agent keeps serving, and the same connection still works.
    let out = run_on(c, &agent.spec(&["echo", "after"]), b"").0;
    assert_eq!(out.stdout, "after\n");
}

#[test]
fn terminal_mode() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&["sh", "-c", "tty; stty size; echo err >&2"]);
    spec.process.terminal = true;
    spec.process.console_size = Some(TtySize {
        rows: 30,
        cols: 100,
    });
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stdout);
    // A pty turns \n into \r\n and merges stderr into the output.
    assert_eq!(out.stdout, "/dev/pts/0\r\n30 100\r\nerr\r\n");
    assert_eq!(out.stderr, "");

    // Closing stdin sends ^D, so a reader of the terminal sees EOF.
    let mut spec = agent.spec(&["cat"]);
    spec.process.terminal = true;
    let out = run(&agent, &spec, b"typed\n");
    assert_eq!(out.code(), 0, "{}", out.stdout);
    // The terminal echoes the input, then cat prints it.
    assert_eq!(out.stdout, "typed\r\ntyped\r\n");
}

#[test]
fn signals_reach_the_process() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut c = agent.connect();
    c.create(&agent.spec(&["sleep", "1000"])).unwrap();
    c.start().unwrap();
    c.signal(9).unwrap();
    c.wait().unwrap();
    loop {
        match c.next_event().unwrap() {
            Event::Exit(s) => {
                assert_eq!(s.termination, Termination::Signaled { signal: 9 });
                assert_eq!(s.code(), 137);
                break;
            }
            Event::Stdout(_) | Event::Stderr(_) => {}
            other => panic!("{other:?}"),
        }
    }
    // A trap-installing init gets catchable signals too.
    let mut c = agent.connect_client_after(c);
    c.create(&agent.spec(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
    ]))
    .unwrap();
    c.start().unwrap();
    match c.next_event().unwrap() {
        Event::Stdout(d) => assert_eq!(d, b"ready\n"),
        other => panic!("{other:?}"),
    }
    c.signal(15).unwrap();
    c.wait().unwrap();
    let mut out = Vec::new();
    loop {
        match c.next_event().unwrap() {
            Event::Stdout(d) => out.extend(d),
            Event::Exit(s) => {
                assert_eq!(s.code(), 7);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(out, b"got-term\n");
}

#[test]
fn disconnect_kills_the_container() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut c = agent.connect();
    c.create(&agent.spec(&["sleep", "1000"])).unwrap();
    let pid = c.start().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(c);
    // The next connection is served only after the old one was cleaned up.
    let out = run(&agent, &agent.spec(&["true"]), b"");
    assert_eq!(out.code(), 0);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn bad_messages_get_errors_not_crashes() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut s = agent.connect_raw();
    write_message(
        &mut s,
        &HostMessage::Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut s).unwrap(),
        AgentMessage::Hello { .. }
    ));

    // Garbage JSON in a well-formed frame: an error, and the stream goes on.
    let body = b"\x00{garbage";
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut s).unwrap(),
        AgentMessage::Error { .. }
    ));
    // Requests that make no sense in this state.
    for msg in [
        HostMessage::Start,
        HostMessage::Wait,
        HostMessage::Signal {
            signal: 9,
            all: false,
        },
    ] {
        assert!(matches!(
            read_then(&mut s, &msg),
            AgentMessage::Error { .. }
        ));
    }
    // An absurd frame length: error, then the agent hangs up.
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut s).unwrap(),
        AgentMessage::Error { .. }
    ));
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut s),
        Err(ProtocolError::Closed)
    ));

    // Still serving.
    let out = run(&agent, &agent.spec(&["echo", "alive"]), b"");
    assert_eq!(out.stdout, "alive\n");
}

fn read_then(s: &mut std::os::unix::net::UnixStream, msg: &HostMessage) -> AgentMessage {
    write_message(s, msg).unwrap();
    read_message(s).unwrap()
}

#[test]
fn version_mismatch_is_reported() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut s = agent.connect_raw();
    write_message(
        &mut s,
        &HostMessage::Hello {
            version: PROTOCOL_VERSION + 1,
        },
    )
    .unwrap();
    assert_eq!(
        read_message::<_, AgentMessage>(&mut s).unwrap(),
        AgentMessage::Hello {
            version: PROTOCOL_VERSION
        }
    );
    match read_message::<_, AgentMessage>(&mut s).unwrap() {
        AgentMessage::Error { message } => {
            assert!(message.contains("version mismatch"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_message::<_, AgentMessage>(&mut s),
        Err(ProtocolError::Closed)
    ));

    // Messages before Hello are refused.
    let mut s = agent.connect_raw();
    assert!(matches!(
        read_then(&mut s, &HostMessage::Start),
        AgentMessage::Error { .. }
    ));
}

#[test]
fn create_errors_leave_nothing_behind() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&["true"]);
    spec.storage.lower = Source::directory("/nonexistent/image");
    let mut c = agent.connect();
    match c.create(&spec) {
        Err(ProtocolError::Agent(m)) => assert!(m.contains("overlay"), "{m}"),
        other => panic!("{other:?}"),
    }
    let state = agent.dir.path().join("state");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);

    let mut spec = agent.spec(&["true"]);
    spec.process.capabilities = Some(vec!["CAP_BOGUS".into()]);
    match c.create(&spec) {
        Err(ProtocolError::Agent(m)) => assert!(m.contains("CAP_BOGUS"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn runs_several_containers_in_turn_and_shuts_down() {
    require!(can_run(), "environment");
    let mut agent = Agent::start();
    let mut c = agent.connect();
    for i in 0..3 {
        let (out, next) = run_on(c, &agent.spec(&["sh", "-c", &format!("echo {i}")]), b"");
        assert_eq!(out.stdout, format!("{i}\n"));
        c = next;
    }
    c.shutdown().unwrap();
    drop(c);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits on shutdown");
    assert!(status.success());
    let state = agent.dir.path().join("state");
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
}

#[test]
fn cgroup_namespace_and_limits() {
    require!(can_run(), "environment");
    let Some(root) = support::cgroup_root() else {
        eprintln!("skipped: no cgroup v2 on this host");
        return;
    };
    let agent = Agent::start();
    let out = run(
        &agent,
        &agent.spec(&["sh", "-c", "grep '^0::' /proc/self/cgroup"]),
        b"",
    );
    assert_eq!(
        out.stdout, "0::/\n",
        "the cgroup namespace is rooted at the container"
    );

    let enabled = controllers(&root);
    if !enabled.contains("memory") || !enabled.contains("pids") {
        eprintln!(
            "skipped limit checks: controllers enabled at {}: {enabled:?}",
            root.display()
        );
        return;
    }
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
    ]);
    spec.resources.memory_limit = Some(64 << 20);
    spec.resources.pids_limit = Some(32);
    let out = run(&agent, &spec, b"");
    assert_eq!(out.stdout, "67108864\n32\n");

    // Allocate far past the limit: the kernel OOM-kills the process.
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    ]);
    spec.resources.memory_limit = Some(16 << 20);
    let out = run(&agent, &spec, b"");
    assert!(out.status.oom_killed, "{:?}", out.status);
    assert_eq!(out.status.termination, Termination::Signaled { signal: 9 });
}

#[test]
fn init_mode_as_pid_namespace_init() {
    require!(can_run(), "environment");
    require!(
        std::process::Command::new("unshare")
            .arg("--help")
            .output()
            .is_ok(),
        "needs util-linux unshare"
    );
    let mut agent = Agent::start_as_namespace_init();
    let script = "awk '$5 == \"/\"' /proc/self/mountinfo | wc -l; echo $$; grep -c /tmp/ /proc/self/mountinfo";
    let (out, mut c) = run_on(agent.connect(), &agent.spec(&["sh", "-c", script]), b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "1", "pivot_root left exactly one root mount");
    assert_eq!(lines[1], "1");
    assert_eq!(lines[2], "1", "nothing of the agent's tree but the overlay");
    c.shutdown().unwrap();
    drop(c);
    // The agent "powers off": reboot(2) in a pid namespace ends it.
    assert!(
        agent.wait_exit(Duration::from_secs(10)).is_some(),
        "namespace did not end"
    );
}

// The OCI parts of the spec: in-place and read-only roots, sub-path and
// tmpfs volumes with options, masked and read-only paths, sysctls,
// seccomp.

/// The agent's reply to a CreateContainer that must fail.
fn create_error(agent: &Agent, spec: &bulkhead_protocol::ContainerSpec) -> String {
    match agent.connect().create(spec) {
        Err(ProtocolError::Agent(m)) => m,
        other => panic!("create should fail: {other:?}"),
    }
}

/// The agent's reply to a Start whose init setup must fail.
fn start_error(agent: &Agent, spec: &bulkhead_protocol::ContainerSpec) -> String {
    let mut c = agent.connect();
    c.create(spec).expect("create");
    match c.start() {
        Err(ProtocolError::Agent(m)) => m,
        other => panic!("start should fail: {other:?}"),
    }
}

/// A copy of the agent's image, as an OCI bundle's rootfs would be.
fn bundle_rootfs(agent: &Agent, dir: &support::TempDir) -> std::path::PathBuf {
    let rootfs = dir.path().join("rootfs");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(agent.image())
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(status.success());
    rootfs
}

fn dir_volume(dir: &std::path::Path, destination: &str) -> Volume {
    Volume::new(
        Source::directory(dir.display().to_string()),
        destination,
        false,
    )
}

#[test]
fn in_place_root_is_written_directly() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let bundle = support::TempDir::new("bundle");
    let rootfs = bundle_rootfs(&agent, &bundle);
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "echo kept > /root/new && rm /etc/group && (grep -c overlay /proc/self/mountinfo || true)",
    ]);
    spec.storage.lower = Source::directory(rootfs.display().to_string());
    spec.storage.in_place = true;
    // Ignored in place: waiting for this disk would time out.
    spec.storage.scratch = Some(Source::block_device("/dev/bulkhead-no-such-disk"));
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "0\n", "no overlay");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("root/new")).unwrap(),
        "kept\n"
    );
    assert!(!rootfs.join("etc/group").exists());
    assert!(agent.image().join("etc/group").exists());
}

#[test]
fn read_only_root_keeps_volumes_writable() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let bundle = support::TempDir::new("bundle-ro");
    let rootfs = bundle_rootfs(&agent, &bundle);
    let data = support::TempDir::new("ro-root-data");
    let script = "touch /new 2>&1; echo x > /data/f && echo data-ok; \
                  echo y > /dev/shm/f && echo shm-ok; head -c 4 /proc/self/stat >/dev/null && echo proc-ok";
    for in_place in [false, true] {
        let mut spec = agent.spec(&["sh", "-c", script]);
        spec.storage.read_only_root = true;
        if in_place {
            spec.storage.lower = Source::directory(rootfs.display().to_string());
            spec.storage.in_place = true;
        }
        spec.storage.volumes = vec![dir_volume(data.path(), "/data")];
        let out = run(&agent, &spec, b"");
        assert_eq!(out.code(), 0, "{}", out.stderr);
        assert_eq!(
            out.stdout, "touch: /new: Read-only file system\ndata-ok\nshm-ok\nproc-ok\n",
            "in place: {in_place}"
        );
        assert_eq!(
            std::fs::read_to_string(data.path().join("f")).unwrap(),
            "x\n"
        );
        assert!(!rootfs.join("new").exists());
    }
}

#[test]
fn subpath_volumes_bind_single_files_and_directories() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let share = support::TempDir::new("share");
    std::fs::write(share.path().join("hosts"), "127.0.0.1 box\n").unwrap();
    std::fs::write(share.path().join("token"), "s3cret\n").unwrap();
    std::fs::create_dir(share.path().join("conf")).unwrap();
    std::fs::write(share.path().join("conf/app.ini"), "k=v\n").unwrap();
    let with_subpath = |sub: &str, destination: &str, read_only: bool| Volume {
        subpath: Some(sub.into()),
        read_only,
        ..dir_volume(share.path(), destination)
    };
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "cat /etc/hosts; [ -f /etc/hosts ] && echo is-file; cat /run/secrets/token; \
         cat /srv/conf/app.ini; echo more >> /etc/hosts 2>/dev/null || echo hosts-ro; \
         echo new > /run/secrets/token && echo token-rw",
    ]);
    spec.storage.volumes = vec![
        with_subpath("hosts", "/etc/hosts", true),
        // Parents that are not in the image are made.
        with_subpath("token", "/run/secrets/token", false),
        with_subpath("conf", "/srv/conf", false),
    ];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "127.0.0.1 box\nis-file\ns3cret\nk=v\nhosts-ro\ntoken-rw\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("token")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("hosts")).unwrap(),
        "127.0.0.1 box\n"
    );

    let mut spec = agent.spec(&["true"]);
    spec.storage.volumes = vec![with_subpath("missing", "/etc/missing", false)];
    let m = create_error(&agent, &spec);
    assert!(
        m.contains("/etc/missing") && m.contains("\"missing\"") && m.contains("No such file"),
        "{m}"
    );
    assert_eq!(
        std::fs::read_dir(agent.dir.path().join("state"))
            .unwrap()
            .count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn tmpfs_volume_takes_its_options() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "stat -c %a /scratch; grep ' /scratch ' /proc/self/mountinfo; \
         dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>&1 | grep -c 'No space'",
    ]);
    spec.storage.volumes = vec![Volume {
        options: ["size=1m", "mode=0710", "nosuid", "noexec", "rbind"]
            .map(String::from)
            .to_vec(),
        ..Volume::new(Source::Tmpfs, "/scratch", false)
    }];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "710");
    let fields: Vec<&str> = lines[1].split(' ').collect();
    let (mount_options, fs_options) = (fields[5], fields[fields.len() - 1]);
    for flag in ["rw", "nosuid", "noexec"] {
        assert!(mount_options.split(',').any(|o| o == flag), "{}", lines[1]);
    }
    assert!(!mount_options.contains("nodev"), "{}", lines[1]);
    assert!(fs_options.contains("size=1024k"), "{}", lines[1]);
    assert_eq!(lines[2], "1", "the 1 MiB tmpfs fills up");
}

#[test]
fn unsupported_mount_options_are_rejected() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let dir = support::TempDir::new("opt");
    let mut spec = agent.spec(&["true"]);
    spec.storage.volumes = vec![Volume {
        options: vec!["ro".into(), "bogus".into()],
        ..dir_volume(dir.path(), "/data")
    }];
    let m = create_error(&agent, &spec);
    assert!(
        m.contains("volume /data: unsupported mount option \"bogus\""),
        "{m}"
    );
    // A tmpfs option only.
    let mut spec = agent.spec(&["true"]);
    spec.storage.volumes = vec![Volume {
        options: vec!["tmpcopyup".into()],
        ..dir_volume(dir.path(), "/run")
    }];
    let m = create_error(&agent, &spec);
    assert!(m.contains("/run") && m.contains("\"tmpcopyup\""), "{m}");
}

#[test]
fn tmpcopyup_fills_the_tmpfs_with_the_roots_files() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let bundle = support::TempDir::new("bundle-copyup");
    let rootfs = bundle_rootfs(&agent, &bundle);
    let app = rootfs.join("srv/app");
    std::fs::create_dir_all(app.join("sub")).unwrap();
    std::fs::write(app.join("hostname"), "box\n").unwrap();
    std::fs::write(app.join("sub/conf"), "k=v\n").unwrap();
    std::os::unix::fs::symlink("sub/conf", app.join("link")).unwrap();
    std::os::unix::fs::chown(app.join("sub/conf"), Some(1234), Some(5678)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [("", 0o750), ("sub/conf", 0o600)] {
        std::fs::set_permissions(app.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let script = "cat /srv/app/hostname /srv/app/link; \
                  stat -c '%a %u:%g' /srv/app /srv/app/sub/conf; \
                  grep -c ' /srv/app tmpfs ' /proc/mounts; \
                  echo new > /srv/app/new && echo written; \
                  head -1 /etc/group; grep -c ' /etc tmpfs ' /proc/mounts; \
                  ls -A /nothing-here | wc -l";
    let tmpfs = |destination: &str, options: &[&str]| Volume {
        options: options.iter().map(|o| o.to_string()).collect(),
        ..Volume::new(Source::Tmpfs, destination, false)
    };
    let mut spec = agent.spec(&["sh", "-c", script]);
    spec.storage.lower = Source::directory(rootfs.display().to_string());
    spec.storage.in_place = true;
    spec.storage.read_only_root = true;
    spec.storage.volumes = vec![
        tmpfs("/srv/app", &["tmpcopyup", "size=1m"]),
        tmpfs("/etc", &["tmpcopyup", "nosuid"]),
        // Nothing in the root to copy.
        tmpfs("/nothing-here", &["tmpcopyup"]),
    ];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "box\nk=v\n750 0:0\n600 1234:5678\n1\nwritten\nroot:x:0:\n1\n0\n"
    );
    // The copy was written, not the root.
    assert!(!app.join("new").exists());

    // Without the option the tmpfs starts empty.
    let mut spec = agent.spec(&["sh", "-c", "ls -A /etc | wc -l"]);
    spec.storage.volumes = vec![tmpfs("/etc", &["size=1m"])];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "0\n");
}

#[test]
fn masked_paths_read_empty() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    std::fs::write(agent.image().join("root/secret"), "hidden\n").unwrap();
    let data = support::TempDir::new("mask-data");
    std::fs::write(data.path().join("key"), "private\n").unwrap();
    let mut script = String::from(
        "wc -c < /etc/group; ls -A /root | wc -l; \
         touch /root/x 2>/dev/null && echo root-rw || echo root-ro; \
         wc -c < /data/key; ls /proc/sys | wc -l",
    );
    let mut expect = String::from("0\n0\nroot-ro\n0\n0\n");
    let mut masked: Vec<String> = ["/etc/group", "/root", "/data/key", "/proc/sys"]
        .map(String::from)
        .to_vec();
    // Host files the container's own /proc and /sys have too.
    if std::path::Path::new("/proc/timer_list").exists() {
        script.push_str("; wc -c < /proc/timer_list");
        expect.push_str("0\n");
        masked.push("/proc/timer_list".into());
    }
    if std::fs::read_dir("/sys/firmware").is_ok_and(|mut d| d.next().is_some()) {
        script.push_str("; ls /sys/firmware | wc -l");
        expect.push_str("0\n");
        masked.push("/sys/firmware".into());
    }
    // Skipped, as runc skips them.
    masked.push("/proc/bulkhead-no-such-file".into());
    masked.push("/no/such/dir".into());
    let mut spec = agent.spec(&["sh", "-c", &script]);
    spec.masked_paths = masked;
    spec.storage.volumes = vec![dir_volume(data.path(), "/data")];
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, expect);
    // Masked for the container only.
    assert_eq!(
        std::fs::read_to_string(data.path().join("key")).unwrap(),
        "private\n"
    );
}

#[test]
fn readonly_paths_refuse_writes() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "touch /etc/new 2>&1; touch /tmp/ok && echo tmp-ok; \
         grep ' /proc/sys ' /proc/self/mountinfo | cut -d' ' -f6",
    ]);
    spec.readonly_paths = ["/etc", "/proc/sys", "/no/such/path"]
        .map(String::from)
        .to_vec();
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "touch: /etc/new: Read-only file system");
    assert_eq!(lines[1], "tmp-ok");
    // The remount kept /proc's own flags.
    let options: Vec<&str> = lines[2].split(',').collect();
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(options.contains(&flag), "{}", lines[2]);
    }
}

#[test]
fn sysctls_are_set_in_the_container_namespaces() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let host = |name: &str| std::fs::read_to_string(format!("/proc/sys/{name}")).unwrap();
    let (domain, forward) = (host("kernel/domainname"), host("net/ipv4/ip_forward"));
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        "cat /proc/sys/kernel/domainname /proc/sys/net/ipv4/ip_forward",
    ]);
    spec.sysctls = [
        ("kernel.domainname", "bulkhead.test"),
        (
            "net.ipv4.ip_forward",
            if forward.trim() == "1" { "0" } else { "1" },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("bulkhead.test\n{}\n", spec.sysctls["net.ipv4.ip_forward"])
    );
    assert_eq!(host("kernel/domainname"), domain, "the host's is untouched");
    assert_eq!(host("net/ipv4/ip_forward"), forward);

    let mut spec = agent.spec(&["true"]);
    spec.sysctls = [("kernel.bulkhead_no_such_knob".to_string(), "1".to_string())]
        .into_iter()
        .collect();
    let m = start_error(&agent, &spec);
    assert!(
        m.contains("cannot set sysctl kernel.bulkhead_no_such_knob to \"1\"")
            && m.contains("No such file"),
        "{m}"
    );
}

#[test]
#[cfg(target_arch = "x86_64")]
fn seccomp_filter_fails_the_syscalls_it_names() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let status = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status";
    // With no_new_privileges, installed last: mkdir and mkdirat.
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        &format!("echo before; mkdir /tmp/x; echo status=$?; {status}"),
    ]);
    spec.process.no_new_privileges = true;
    spec.seccomp_bpf = Some(deny_filter(&[83, 258]));
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "before\nstatus=1\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    );
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );

    // Without, installed while the init is still privileged: chmod,
    // fchmod, fchmodat, fchmodat2; mkdir works.
    let mut spec = agent.spec(&[
        "sh",
        "-c",
        &format!(
            "touch /tmp/f; chmod 600 /tmp/f; echo status=$?; mkdir /tmp/d && echo mkdir-ok; {status}"
        ),
    ]);
    spec.seccomp_bpf = Some(deny_filter(&[90, 91, 268, 452]));
    let out = run(&agent, &spec, b"");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "status=1\nmkdir-ok\nNoNewPrivs:\t0\nSeccomp:\t2\n"
    );
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );

    // A jump past the end: the kernel refuses the program.
    let mut spec = agent.spec(&["true"]);
    let mut bad = 0x15u16.to_ne_bytes().to_vec();
    bad.extend([9, 9]);
    bad.extend(0u32.to_ne_bytes());
    spec.seccomp_bpf = Some(bad);
    let m = start_error(&agent, &spec);
    assert!(
        m.contains("cannot install the seccomp filter (1 instructions)")
            && m.contains("Invalid argument"),
        "{m}"
    );
}
