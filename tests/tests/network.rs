//! Networking end to end: containers on bulkhead's bridge and on user
//! networks, published TCP and UDP ports, `--network none`, the sweep
//! after `kill -9`, and the errors. Every test runs bulkhead inside a
//! network namespace of its own and talks only to addresses inside it.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use bulkhead_tests::leftovers::is_tap;
use bulkhead_tests::netns::NetNs;
use bulkhead_tests::{static_c_binary, tempdir, Root, Run};

/// Long enough for a guest on a loaded PVM host to bring its server up.
const SERVE_TIMEOUT: Duration = Duration::from_secs(120);

fn ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

fn fails_with(run: &Run, needle: &str) {
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains(needle), "no {needle:?} in: {run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "not one line: {run:?}"
    );
}

/// A detached busybox httpd serving `body` at `/` on port 80.
fn serve(root: &Root, name: &str, body: &str, extra: &[&str]) {
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["busybox", "sh", "-c", &script]);
    ok(&root.bulkhead_detaching(&args));
}

/// The containers a network's leases still name.
fn endpoints(root: &Root, network: &str) -> Vec<serde_json::Value> {
    let run = root.bulkhead(&["network", "inspect", network]);
    ok(&run);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("inspect is JSON");
    v[0]["containers"].as_array().cloned().unwrap_or_default()
}

/// Nothing of a container's network is left in `ns`: no TAP, no DNAT
/// rule, no lease.
fn assert_network_clean(root: &Root, ns: &NetNs, network: &str) {
    let (_, links) = ns.output(&["ip", "-o", "link", "show"]);
    assert!(!links.lines().any(is_tap), "a TAP is left: {links}");
    let (_, table) = ns.output(&["nft", "list", "table", "ip", "bulkhead"]);
    assert!(!table.contains("dnat"), "a published port is left: {table}");
    assert_eq!(guarded_ports(ns), Vec::<String>::new());
    assert_eq!(endpoints(root, network), Vec::<serde_json::Value>::new());
}

/// The bridge ports our anti-spoofing table holds to a lease, once each.
fn guarded_ports(ns: &NetNs) -> Vec<String> {
    let (_, table) = ns.output(&["nft", "list", "table", "bridge", "bulkhead"]);
    let mut ports: Vec<String> = table
        .lines()
        .filter(|l| l.contains("ether saddr !="))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect();
    ports.dedup();
    ports
}

#[test]
fn two_containers_serve_port_80_on_two_host_ports() {
    let root = Root::new();
    let ns = root.netns();
    serve(&root, "web-a", "from-a", &["-p", "8081:80"]);
    serve(&root, "web-b", "from-b", &["-p", "127.0.0.1:8082:80/tcp"]);
    assert_eq!(ns.http_get("127.0.0.1:8081").trim(), "from-a");
    assert_eq!(ns.http_get("127.0.0.1:8082").trim(), "from-b");
    // Through the bridge's address too, as another host would come in.
    assert_eq!(ns.http_get("10.89.0.1:8081").trim(), "from-a");

    let inspect = endpoints(&root, "bridge");
    assert_eq!(inspect.len(), 2, "{inspect:?}");
    // Each VM's TAP may carry only its lease's MAC and address, and the
    // traffic above went through those checks.
    let guarded = guarded_ports(ns);
    assert_eq!(guarded.len(), 2, "{guarded:?}");
    assert!(guarded.iter().all(|p| p.starts_with("bh")), "{guarded:?}");
    ok(&root.bulkhead(&["rm", "-f", "web-a", "web-b"]));
    assert_network_clean(&root, ns, "bridge");
}

#[test]
fn containers_on_a_user_network_reach_each_other_by_name() {
    let root = Root::new();
    let ns = root.netns();
    ok(&root.bulkhead(&["network", "create", "appnet"]));
    let ls = root.bulkhead(&["network", "ls"]);
    ok(&ls);
    assert!(ls.stdout.contains("appnet"), "{ls:?}");
    serve(&root, "srv", "by-name", &["--network", "appnet"]);

    let fetch = root.bulkhead(&[
        "run",
        "--network",
        "appnet",
        "busybox",
        "sh",
        "-c",
        "for i in $(seq 60); do wget -q -O- http://srv/ && exit 0; sleep 1; done; exit 1",
    ]);
    ok(&fetch);
    assert_eq!(fetch.stdout.trim(), "by-name");
    root.assert_clean(&fetch);

    let busy = root.bulkhead(&["network", "rm", "appnet"]);
    assert_eq!(busy.code, Some(1), "a network in use was removed: {busy:?}");
    assert!(busy.stderr.contains("active endpoints: srv"), "{busy:?}");
    ok(&root.bulkhead(&["rm", "-f", "srv"]));
    assert_network_clean(&root, ns, "appnet");
    ok(&root.bulkhead(&["network", "rm", "appnet"]));
    let (_, links) = ns.output(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("bh-"),
        "the network's bridge is left: {links}"
    );
}

#[test]
fn the_default_network_gives_eth0_and_none_gives_only_lo() {
    let root = Root::new();
    let ns = root.netns();
    let bridged = root.bulkhead(&[
        "run",
        "busybox",
        "sh",
        "-c",
        "ip -o -4 addr; cat /etc/hosts",
    ]);
    ok(&bridged);
    assert!(bridged.stdout.contains("eth0"), "{bridged:?}");
    assert!(bridged.stdout.contains("inet 10.89.0."), "{bridged:?}");
    assert!(bridged.stdout.contains("localhost"), "{bridged:?}");

    let none = root.bulkhead(&["run", "--network", "none", "busybox", "ip", "-o", "link"]);
    ok(&none);
    let links: Vec<_> = none.stdout.lines().collect();
    assert_eq!(links.len(), 1, "{none:?}");
    assert!(links[0].contains(": lo:"), "{none:?}");
    root.assert_clean(&none);
    assert_network_clean(&root, ns, "bridge");
}

#[test]
fn udp_echo_through_a_published_port() {
    let root = Root::new();
    let ns = root.netns();
    let fixtures = tempdir();
    static_c_binary("udp_echo", fixtures.path());
    let share = format!("{}:/fix:ro", fixtures.path().display());
    ok(&root.bulkhead_detaching(&[
        "run",
        "-d",
        "--name",
        "echo",
        "-p",
        "5353:7/udp",
        "-v",
        &share,
        "busybox",
        "/fix/udp_echo",
        "7",
    ]));
    let reply = ns.run(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let deadline = Instant::now() + SERVE_TIMEOUT;
        let mut buf = [0u8; 64];
        loop {
            sock.send_to(b"ping-udp", "127.0.0.1:5353").unwrap();
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            assert!(Instant::now() < deadline, "no UDP echo");
        }
    });
    assert_eq!(reply, "ping-udp");
    ok(&root.bulkhead(&["rm", "-f", "echo"]));
    assert_network_clean(&root, ns, "bridge");
}

#[test]
fn kill_9_of_bulkhead_leaves_nothing_after_the_sweep() {
    let root = Root::new();
    let ns = root.netns();
    let mut child = root.spawn(&["run", "-p", "8090:80", "busybox", "sleep", "600"]);
    let deadline = Instant::now() + SERVE_TIMEOUT;
    while endpoints(&root, "bridge").is_empty() {
        assert!(Instant::now() < deadline, "the run never took a lease");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, table) = ns.output(&["nft", "list", "table", "ip", "bulkhead"]);
    assert!(
        table.contains("dnat"),
        "the port was never published: {table}"
    );
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    let _ = child.wait();

    let gc = root.bulkhead(&["gc"]);
    ok(&gc);
    assert_network_clean(&root, ns, "bridge");
}

#[test]
fn network_errors_are_one_line_and_leave_nothing() {
    let root = Root::new();
    let ns = root.netns();
    let unknown = root.bulkhead(&["run", "--network", "nosuchnet", "busybox", "true"]);
    fails_with(&unknown, "nosuchnet");
    let bad = root.bulkhead(&["run", "-p", "80:http", "busybox", "true"]);
    fails_with(&bad, "80:http");

    // Something of the host's already listens on the port.
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let ns = ns.path();
        std::thread::spawn(move || {
            bulkhead_tests::netns::enter_path(&ns);
            let l = std::net::TcpListener::bind("0.0.0.0:8095").unwrap();
            tx.send(()).unwrap();
            let _ = stop_rx.recv();
            drop(l);
        })
    };
    rx.recv().unwrap();
    let busy = root.bulkhead(&["run", "-p", "8095:80", "busybox", "true"]);
    fails_with(&busy, "8095");
    stop_tx.send(()).unwrap();
    holder.join().unwrap();
    root.assert_clean(&busy);
    assert_network_clean(&root, ns, "bridge");
}
