//! Side connections on the host: processes exec'd into a running
//! container, ListProcesses, Freeze, Signal to the whole container, and
//! how side connections end. Like tests/container.rs they need root and
//! /bin/busybox, and skip (pass with a note) otherwise.

mod support;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_protocol::{
    read_message, write_message, AgentClient, AgentMessage, ContainerSpec, Event, ExitStatus,
    HostMessage, ProcessSpec, ProtocolError, Termination, TtySize, User,
};
use support::{can_run, deny_filter, Agent};

/// The longest any one read may take: a test that would hang fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn client(agent: &Agent) -> AgentClient<UnixStream> {
    let s = agent.connect_raw();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut c = AgentClient::new(s);
    c.handshake().expect("handshake");
    c
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec::new(args.iter().map(|s| s.to_string()).collect())
}

/// A main connection holding a started container; the init's pid.
fn started(agent: &Agent, spec: &ContainerSpec) -> (AgentClient<UnixStream>, u32) {
    let mut c = client(agent);
    c.create(spec).expect("create");
    let pid = c.start().expect("start");
    (c, pid)
}

#[derive(Debug)]
struct Output {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

/// Execs `p` on a new side connection, feeds it `stdin` (then closes
/// it) and collects its output and exit.
fn exec(agent: &Agent, p: &ProcessSpec, stdin: &[u8]) -> Output {
    let mut side = client(agent);
    side.exec(p).expect("exec");
    collect(side, stdin)
}

/// Waits for the exec'd process of `side` like the CLI does: Wait first,
/// stdin from another thread, events until Exit; then the agent hangs up.
fn collect(mut side: AgentClient<UnixStream>, stdin: &[u8]) -> Output {
    side.wait().unwrap();
    let (mut writer, mut reader) = side.split().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        if !stdin.is_empty() {
            writer.send_stdin(&stdin).unwrap();
        }
        writer.close_stdin().unwrap();
    });
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = loop {
        match reader.next_event().expect("event") {
            Event::Stdout(d) => stdout.extend(d),
            Event::Stderr(d) => stderr.extend(d),
            Event::Exit(s) => break s,
            other => panic!("unexpected event {other:?}"),
        }
    };
    feeder.join().unwrap();
    assert!(
        matches!(reader.next_event(), Err(ProtocolError::Closed)),
        "the side connection closes after the exit"
    );
    Output {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        status,
    }
}

/// Reads events until Exit (output discarded).
fn exit_of(c: &mut AgentClient<UnixStream>) -> ExitStatus {
    loop {
        match c.next_event().expect("event") {
            Event::Exit(s) => return s,
            Event::Stdout(_) | Event::Stderr(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

fn agent_error(r: Result<impl std::fmt::Debug, ProtocolError>) -> String {
    match r {
        Err(ProtocolError::Agent(m)) => m,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_runs_in_the_containers_namespaces_root_and_cgroup() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut spec = agent.spec(&["sleep", "1000"]);
    spec.hostname = Some("box".into());
    let (_main, _) = started(&agent, &spec);

    let out = exec(&agent, &process(&["echo", "hello"]), b"");
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.stderr, "");
    assert_eq!(out.status.termination, Termination::Exited { code: 0 });

    let mut p = process(&[
        "sh",
        "-c",
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; \
         test -e /etc/not-executable && echo image-root; pwd; \
         ip link | grep -c '^[0-9]'; grep '^0::' /proc/self/cgroup; \
         echo $FOO $HOME; echo $PATH",
    ]);
    p.env = vec!["FOO=bar".into()];
    p.cwd = "/tmp".into();
    let out = exec(&agent, &p, b"");
    assert_eq!(out.status.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "box", "the container's uts namespace");
    assert_eq!(lines[1], "sleep 1000 ", "the container's pid namespace");
    assert_eq!(lines[2], "image-root", "the container's root");
    assert_eq!(lines[3], "/tmp");
    assert_eq!(lines[4], "1", "the container's network namespace");
    if support::cgroup_root().is_some() {
        assert_eq!(lines[5], "0::/", "the container's cgroup and its namespace");
    }
    assert_eq!(lines[lines.len() - 2], "bar /root");
    assert_eq!(
        lines[lines.len() - 1],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
}

#[test]
fn exec_exit_codes_propagate() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (_main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let out = exec(&agent, &process(&["sh", "-c", "echo err >&2; exit 7"]), b"");
    assert_eq!(out.status.code(), 7);
    assert_eq!(out.stderr, "err\n");

    // Like the init: 127 for nothing to run, 126 for what cannot run.
    let out = exec(&agent, &process(&["no-such-command"]), b"");
    assert_eq!(out.status.code(), 127);
    assert!(
        out.stderr.contains("executable file not found"),
        "{}",
        out.stderr
    );
    let out = exec(&agent, &process(&["/etc/not-executable"]), b"");
    assert_eq!(out.status.code(), 126);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);

    let out = exec(&agent, &process(&["sh", "-c", "kill -9 $$"]), b"");
    assert_eq!(out.status.termination, Termination::Signaled { signal: 9 });
}

#[test]
fn exec_as_another_user_with_its_limits() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (_main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let script = "id; echo $HOME; grep -E '^Cap(Eff|Bnd)' /proc/self/status | tr -s '\\t' ' '; \
                  grep NoNewPrivs /proc/self/status; ulimit -n";
    let mut p = process(&["sh", "-c", script]);
    p.user = User::Name {
        name: "nobody".into(),
    };
    p.no_new_privileges = true;
    p.rlimits = vec![bulkhead_protocol::Rlimit {
        kind: bulkhead_protocol::RlimitKind::RlimitNofile,
        soft: 123,
        hard: 456,
    }];
    let out = exec(&agent, &p, b"");
    assert_eq!(out.status.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "uid=65534(nobody) gid=65534(nogroup) groups=50(staff)",
            "/nonexistent",
            "CapEff: 0000000000000000",
            "CapBnd: 00000000a80425fb",
            "NoNewPrivs:\t1",
            "123"
        ]
    );

    let mut p = process(&["sh", "-c", "id -u; id -g; grep CapEff /proc/self/status"]);
    p.user = User::Id {
        uid: 1234,
        gid: 5,
        additional_gids: Vec::new(),
    };
    let out = exec(&agent, &p, b"");
    assert_eq!(out.stdout, "1234\n5\nCapEff:\t0000000000000000\n");

    // Root keeps exactly the capabilities asked for.
    let mut p = process(&["grep", "CapEff", "/proc/self/status"]);
    p.capabilities = Some(vec!["CAP_KILL".into()]);
    let out = exec(&agent, &p, b"");
    assert_eq!(out.stdout, "CapEff:\t0000000000000020\n");

    // An unknown user is an error reply, as it is for the init.
    let mut side = client(&agent);
    let mut p = process(&["true"]);
    p.user = User::Name {
        name: "ghost".into(),
    };
    let m = agent_error(side.exec(&p));
    assert!(m.contains("ghost"), "{m}");
}

#[test]
fn exec_stdin_round_trip() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (_main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    // More than a pipe holds, so the agent must buffer and flush.
    let input: Vec<u8> = (0..300_000u32)
        .map(|i| b"0123456789abcdef\n"[(i % 17) as usize])
        .collect();
    let out = exec(&agent, &process(&["cat"]), &input);
    assert_eq!(out.status.code(), 0);
    assert_eq!(out.stdout.as_bytes(), &input[..]);
    let out = exec(&agent, &process(&["wc", "-c"]), b"12345");
    assert_eq!(out.stdout.trim(), "5");
}

#[test]
fn exec_with_a_terminal() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (_main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let mut p = process(&[
        "sh",
        "-c",
        "tty; test -t 0 && test -t 1 && echo is-a-tty; stty size; echo $TERM; echo err >&2",
    ]);
    p.terminal = true;
    p.console_size = Some(TtySize {
        rows: 30,
        cols: 100,
    });
    let out = exec(&agent, &p, b"");
    assert_eq!(out.status.code(), 0, "{}", out.stdout);
    let lines: Vec<&str> = out.stdout.split("\r\n").collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{}", out.stdout);
    assert_eq!(&lines[1..], ["is-a-tty", "30 100", "xterm", "err", ""]);
    assert_eq!(out.stderr, "");

    // ResizeTty reaches the exec'd process's terminal (before the input
    // that makes it look).
    let mut p = process(&["sh", "-c", "read x; stty size"]);
    p.terminal = true;
    let mut side = client(&agent);
    side.exec(&p).unwrap();
    side.resize_tty(31, 101).unwrap();
    let out = collect(side, b"go\n");
    assert_eq!(out.stdout, "go\r\n31 101\r\n");

    // Closing stdin sends ^D, which ends input on the terminal.
    let mut p = process(&["cat"]);
    p.terminal = true;
    let out = exec(&agent, &p, b"typed\n");
    assert_eq!(out.status.code(), 0);
    assert_eq!(out.stdout, "typed\r\ntyped\r\n");
}

#[test]
fn exec_needs_a_running_container() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let mut main = client(&agent);
    main.create(&agent.spec(&["true"])).unwrap();
    let mut side = client(&agent);
    let m = agent_error(side.exec(&process(&["echo"])));
    assert_eq!(m, "container is not running");
    // The connection is still usable.
    assert_eq!(side.list_processes().unwrap(), Vec::<u32>::new());

    // Once the init has exited (its exit not yet collected by the host).
    let pid = main.start().unwrap();
    wait_until("the init exits", || !alive(pid));
    let m = agent_error(client(&agent).exec(&process(&["echo"])));
    assert_eq!(m, "container is not running");
    main.wait().unwrap();
    assert_eq!(exit_of(&mut main).code(), 0);
}

#[test]
fn side_connections_refuse_other_first_requests() {
    require!(can_run(), "environment");
    let mut agent = Agent::start();
    let (mut main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    for msg in [
        HostMessage::Start,
        HostMessage::Shutdown,
        HostMessage::CreateContainer {
            spec: Box::new(agent.spec(&["true"])),
        },
        HostMessage::Refresh {
            entropy: vec![1; 16],
            realtime_ns: 1,
            hostname: None,
        },
        HostMessage::Wait,
    ] {
        let mut s = client(&agent).into_inner();
        write_message(&mut s, &msg).unwrap();
        match read_message::<_, AgentMessage>(&mut s).unwrap() {
            AgentMessage::Error { message } => {
                assert!(message.contains("side connection"), "{message}")
            }
            other => panic!("{msg:?}: {other:?}"),
        }
        assert!(matches!(
            read_message::<_, AgentMessage>(&mut s),
            Err(ProtocolError::Closed)
        ));
    }
    // Exec is for side connections only.
    let m = agent_error(main.exec(&process(&["true"])));
    assert!(m.contains("side connection"), "{m}");
    // The Shutdown on a side connection did nothing.
    assert!(!agent.has_exited());
    let out = exec(&agent, &process(&["echo", "still"]), b"");
    assert_eq!(out.stdout, "still\n");
}

/// ListProcesses lists the init and exec'd processes, on either kind of
/// connection, with or without a cgroup.
fn lists_processes(agent: &Agent) {
    let (mut main, init) = started(agent, &agent.spec(&["sleep", "1000"]));
    let mut side = client(agent);
    let execd = side.exec(&process(&["sleep", "500"])).unwrap();
    let pids = client(agent).list_processes().unwrap();
    assert!(pids.contains(&init), "{pids:?} lacks the init {init}");
    assert!(pids.contains(&execd), "{pids:?} lacks the exec'd {execd}");
    assert!(!pids.contains(&agent.pid()), "{pids:?}");
    assert_eq!(main.list_processes().unwrap(), pids);

    // Its side connection hung up: the exec'd process is killed.
    drop(side);
    wait_until("the exec'd process is gone", || !alive(execd));
    wait_until("it is not listed", || {
        main.list_processes().unwrap() == [init]
    });
}

#[test]
fn list_processes_with_a_cgroup() {
    require!(can_run(), "environment");
    require!(
        support::cgroup_root().is_some(),
        "no cgroup v2 on this host"
    );
    lists_processes(&Agent::start());
}

#[test]
fn list_processes_without_a_cgroup() {
    require!(can_run(), "environment");
    lists_processes(&Agent::start_with(None));
}

/// The container's cgroup on this host, found from its init.
fn cgroup_of(pid: u32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    support::cgroup_root()
        .unwrap()
        .join(rel.trim_start_matches('/'))
}

fn counter(upper: &Path) -> String {
    std::fs::read_to_string(upper.join("tmp/n")).unwrap_or_default()
}

#[test]
fn freeze_and_thaw() {
    require!(can_run(), "environment");
    require!(
        support::cgroup_root().is_some(),
        "no cgroup v2 on this host"
    );
    let agent = Agent::start();
    let spec = agent.spec(&[
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.02; done",
    ]);
    let upper = PathBuf::from(spec.storage.scratch.as_ref().unwrap().path().unwrap()).join("upper");
    let (mut main, init) = started(&agent, &spec);
    let events = cgroup_of(init).join("cgroup.events");
    wait_until("the counter runs", || !counter(&upper).is_empty());

    client(&agent).freeze(true).unwrap();
    assert!(std::fs::read_to_string(&events)
        .unwrap()
        .contains("frozen 1"));
    let before = counter(&upper);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&upper), before, "frozen processes do not run");
    // A process exec'd now would freeze before it could exec.
    let m = agent_error(client(&agent).exec(&process(&["true"])));
    assert_eq!(m, "container is frozen");

    main.freeze(false).unwrap();
    assert!(std::fs::read_to_string(&events)
        .unwrap()
        .contains("frozen 0"));
    wait_until("the counter moves again", || counter(&upper) != before);
    let out = exec(&agent, &process(&["echo", "thawed"]), b"");
    assert_eq!(out.stdout, "thawed\n");

    // Frozen, the container still dies when killed.
    main.freeze(true).unwrap();
    main.signal(9).unwrap();
    main.wait().unwrap();
    assert_eq!(
        exit_of(&mut main).termination,
        Termination::Signaled { signal: 9 }
    );
    // Not running any more.
    let m = agent_error(main.freeze(false));
    assert!(m.contains("container"), "{m}");
}

#[test]
fn freeze_needs_a_cgroup() {
    require!(can_run(), "environment");
    let agent = Agent::start_with(None);
    let (_main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let m = agent_error(client(&agent).freeze(true));
    assert_eq!(m, "no cgroup to freeze");
}

/// Signal with `all` reaches a background child of the init, which the
/// init (as its namespace's init, SIGTERM is ignored unless handled) would
/// not pass on: without `all`, the container would never exit.
fn signal_all_reaches_every_process(agent: &Agent) {
    let spec = agent.spec(&["sh", "-c", "sleep 1000 & wait $!; echo status $?"]);
    let (main, _) = started(agent, &spec);
    let (mut writer, mut reader) = main.split().unwrap();
    // From an exec'd process's connection, too: it goes to the container.
    let mut side = client(agent);
    side.exec(&process(&["sleep", "1000"])).unwrap();
    side.wait().unwrap();

    writer.signal(15).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    side.signal_all(15).unwrap();
    writer.wait().unwrap();
    let mut out = Vec::new();
    let status = loop {
        match reader.next_event().expect("event") {
            Event::Stdout(d) => out.extend(d),
            // The shell's note on its job ("Terminated").
            Event::Stderr(_) => {}
            Event::Exit(s) => break s,
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert_eq!(String::from_utf8_lossy(&out), "status 143\n");
    assert_eq!(status.code(), 0);
    assert_eq!(
        exit_of(&mut side).termination,
        Termination::Signaled { signal: 15 }
    );
}

#[test]
fn signal_all_with_a_cgroup() {
    require!(can_run(), "environment");
    require!(
        support::cgroup_root().is_some(),
        "no cgroup v2 on this host"
    );
    let agent = Agent::start();
    signal_all_reaches_every_process(&agent);

    // On the main connection; SIGKILL goes through cgroup.kill.
    let spec = agent.spec(&["sh", "-c", "trap '' TERM; sleep 1000 & wait $!"]);
    let (mut main, _) = started(&agent, &spec);
    main.signal_all(9).unwrap();
    main.wait().unwrap();
    assert_eq!(
        exit_of(&mut main).termination,
        Termination::Signaled { signal: 9 }
    );
}

#[test]
fn signal_all_without_a_cgroup() {
    require!(can_run(), "environment");
    signal_all_reaches_every_process(&Agent::start_with(None));
}

#[test]
fn exec_dies_with_the_container() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (mut main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let mut side = client(&agent);
    let execd = side.exec(&process(&["sleep", "1000"])).unwrap();
    side.wait().unwrap();
    main.signal(9).unwrap();
    main.wait().unwrap();
    assert_eq!(exit_of(&mut main).code(), 137);
    assert_eq!(
        exit_of(&mut side).termination,
        Termination::Signaled { signal: 9 }
    );
    assert!(matches!(side.next_event(), Err(ProtocolError::Closed)));
    assert!(!alive(execd));
}

#[test]
fn main_hang_up_with_an_exec_running_leaves_the_agent_serving() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (main, init) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let mut side = client(&agent);
    let execd = side.exec(&process(&["sleep", "1000"])).unwrap();
    side.wait().unwrap();
    // The agent kills the init, whose end waits for the exec'd process
    // (the agent's child) to be reaped: the agent must not wait for the
    // init alone.
    drop(main);
    assert_eq!(
        exit_of(&mut side).termination,
        Termination::Signaled { signal: 9 }
    );
    assert!(!alive(init) && !alive(execd));
    let (out, _) = support::run_on(client(&agent), &agent.spec(&["echo", "after"]), b"");
    assert_eq!(out.stdout, "after\n");

    // The exec pointed the agent's children at the container's pid
    // namespace and back: a later container's is a child of ours again.
    let (_next, next_init) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let levels = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map(|ids| ids.split_whitespace().count())
            .unwrap()
    };
    assert_eq!(levels(&next_init.to_string()), levels("self") + 1);
}

#[test]
fn shutdown_ends_side_connections() {
    require!(can_run(), "environment");
    let mut agent = Agent::start();
    let (mut main, _) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let mut side = client(&agent);
    let execd = side.exec(&process(&["sleep", "1000"])).unwrap();
    let mut control = client(&agent);
    control.list_processes().unwrap();
    main.shutdown().unwrap();
    drop(main);
    for c in [&mut side, &mut control] {
        assert!(matches!(c.next_event(), Err(ProtocolError::Closed)));
    }
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!alive(execd));
}

#[test]
fn a_slow_side_reader_does_not_stall_the_main_connection() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    let (mut main, _) = started(
        &agent,
        &agent.spec(&["sh", "-c", "read line; echo got $line"]),
    );
    // Far more output than the socket holds, never read.
    let mut side = client(&agent);
    side.exec(&process(&["sh", "-c", "yes | head -c 50000000"]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    main.send_stdin(b"ping\n").unwrap();
    main.wait().unwrap();
    let mut out = Vec::new();
    let status = loop {
        match main.next_event().unwrap() {
            Event::Stdout(d) => out.extend(d),
            Event::Exit(s) => break s,
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert_eq!(out, b"got ping\n");
    assert_eq!(status.code(), 0);
    drop(side);
}

#[test]
fn exec_in_init_mode() {
    require!(can_run(), "environment");
    require!(
        std::process::Command::new("unshare")
            .arg("--help")
            .output()
            .is_ok(),
        "needs util-linux unshare"
    );
    // As in the guest: the agent is PID 1 (of a pid namespace here) and
    // the container's root was pivoted into from a re-rooted agent.
    let mut agent = Agent::start_as_namespace_init();
    let (mut main, init) = started(&agent, &agent.spec(&["sleep", "1000"]));
    let script = "test -e /etc/not-executable && echo image-root; \
                  awk '$5 == \"/\"' /proc/self/mountinfo | wc -l; cat /proc/1/cmdline | tr '\\0' ' '";
    let out = exec(&agent, &process(&["sh", "-c", script]), b"");
    assert_eq!(out.status.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "image-root\n1\nsleep 1000 ");
    let pids = main.list_processes().unwrap();
    assert!(pids.contains(&init), "{pids:?}");
    main.shutdown().unwrap();
    drop(main);
    assert!(
        agent.wait_exit(Duration::from_secs(10)).is_some(),
        "namespace did not end"
    );
}

#[test]
#[cfg(target_arch = "x86_64")]
fn exec_gets_the_containers_seccomp_filter() {
    require!(can_run(), "environment");
    let agent = Agent::start();
    // mkdir and mkdirat fail in the container.
    let mut spec = agent.spec(&["sleep", "1000"]);
    spec.process.no_new_privileges = true;
    spec.seccomp_bpf = Some(deny_filter(&[83, 258]));
    let (_main, _) = started(&agent, &spec);
    let mut p = process(&[
        "sh",
        "-c",
        "mkdir /tmp/x; echo status=$?; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    ]);
    p.no_new_privileges = true;
    let out = exec(&agent, &p, b"");
    assert_eq!(out.status.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, "status=1\nNoNewPrivs:\t1\nSeccomp:\t2\n");
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );
}
