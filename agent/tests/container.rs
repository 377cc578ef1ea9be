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
use support::{can_run, controllers, run, run_on, Agent};

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
