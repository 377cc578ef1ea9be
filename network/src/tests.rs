//! Tests of `Networks` against the kernel: each runs on a thread of its
//! own in a fresh network namespace, so nft, bridges and port probes never
//! touch the host's network.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::*;

/// Runs `f` on a new thread in a new network namespace (lo up); processes
/// it spawns (nft) inherit that namespace. None when the test cannot run
/// here (not root, or no nft), after saying so.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root");
        return None;
    }
    let nft = Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !nft.is_ok_and(|s| s.success()) {
        eprintln!("skipped: needs nft (apt-get install nftables)");
        return None;
    }
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(up.success(), "ip link set lo up: {up}");
        f()
    });
    Some(
        thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
    )
}

fn request<'a>(
    network: &'a str,
    id: &'a str,
    ports: &'a [PortMapping],
    owner: u32,
) -> ConnectRequest<'a> {
    ConnectRequest {
        network,
        container_id: id,
        name: Some(id),
        tap: "tap0",
        mac: mac_for(id),
        ports,
        owner_pid: owner,
    }
}

fn specs(list: &[&str]) -> Vec<PortMapping> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn me() -> u32 {
    std::process::id()
}

/// A process to own leases, killed (and reaped) when the test says.
struct Owner(std::process::Child);

impl Owner {
    fn spawn() -> Owner {
        Owner(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lease_files(root: &Path, network: &str) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(root.join("networks").join(network).join("leases"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
    names.sort();
    names
}

/// The DNAT rules of our table, as (daddr, dport, to address, to port).
fn dnats() -> Vec<(Option<String>, u64, String, u64)> {
    let Some(table) = nft::list_table().unwrap() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in table["nftables"].as_array().unwrap() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        if rule["chain"] != "ports" {
            continue;
        }
        let expr = rule["expr"].as_array().unwrap();
        let field = |f: &str| {
            expr.iter()
                .find(|e| e["match"]["left"]["payload"]["field"] == f)
                .map(|e| e["match"]["right"].clone())
        };
        let dnat = expr.iter().find_map(|e| e.get("dnat")).unwrap();
        out.push((
            field("daddr").and_then(|v| v.as_str().map(str::to_owned)),
            field("dport").and_then(|v| v.as_u64()).unwrap(),
            dnat["addr"].as_str().unwrap().to_owned(),
            dnat["port"].as_u64().unwrap(),
        ));
    }
    out
}

fn table_exists() -> bool {
    nft::list_table().unwrap().is_some()
}

#[test]
fn open_defines_the_bridge_network() {
    let tmp = tempfile::tempdir().unwrap();
    let nets = Networks::open(tmp.path()).unwrap();
    let def = nets.get("bridge").unwrap();
    assert_eq!(def.bridge, "bulkhead0");
    assert_eq!(def.subnet.to_string(), "10.89.0.0/24");
    assert_eq!(def.gateway, Ipv4Addr::new(10, 89, 0, 1));
    // Opening again keeps it as it was.
    let again = Networks::open(tmp.path()).unwrap();
    assert_eq!(again.get("bridge").unwrap(), def);
    assert!(matches!(
        nets.remove("bridge"),
        Err(NetworkError::Predefined(_))
    ));
    let err = nets.get("nope").unwrap_err().to_string();
    assert_eq!(err, "network \"nope\" not found");
}

#[test]
fn create_picks_distinct_subnets() {
    let tmp = tempfile::tempdir().unwrap();
    let nets = Networks::open(tmp.path()).unwrap();
    let a = nets.create("a", None).unwrap();
    let b = nets.create("b", None).unwrap();
    assert_eq!(a.subnet.to_string(), "10.89.1.0/24");
    assert_eq!(a.gateway, Ipv4Addr::new(10, 89, 1, 1));
    assert_eq!(a.bridge, "bh-a");
    assert_eq!(b.subnet.to_string(), "10.89.2.0/24");
    let c = nets
        .create("c", Some("192.168.77.0/24".parse().unwrap()))
        .unwrap();
    assert_eq!(c.gateway, Ipv4Addr::new(192, 168, 77, 1));
    assert!(matches!(
        nets.create("a", None),
        Err(NetworkError::Exists(_))
    ));
    assert!(matches!(
        nets.create("d", Some("10.89.2.0/25".parse().unwrap())),
        Err(NetworkError::SubnetOverlap { .. })
    ));
    assert!(matches!(
        nets.create("bad name", None),
        Err(NetworkError::BadName(_))
    ));
    let names: Vec<String> = nets.list().unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["a", "b", "bridge", "c"]);
    nets.remove("a").unwrap();
    // The freed subnet is the first free one again.
    assert_eq!(
        nets.create("e", None).unwrap().subnet.to_string(),
        "10.89.1.0/24"
    );
    assert!(matches!(nets.remove("a"), Err(NetworkError::Unknown(_))));
}

#[test]
fn leases_allocate_release_and_sweep() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        let dead_owner = Owner::spawn();
        let a = nets
            .connect(&request("bridge", "a", &[], dead_owner.pid()))
            .unwrap();
        let b = nets.connect(&request("bridge", "b", &[], me())).unwrap();
        assert_eq!(a.address.to_string(), "10.89.0.2/24");
        assert_eq!(b.address.to_string(), "10.89.0.3/24");
        assert_eq!(b.gateway, Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(b.mac, mac_for("b"));
        assert_eq!(b.peers, vec![("a".to_owned(), Ipv4Addr::new(10, 89, 0, 2))]);
        assert!(matches!(
            nets.connect(&request("bridge", "b", &[], me())),
            Err(NetworkError::AlreadyConnected { .. })
        ));
        assert_eq!(
            lease_files(tmp.path(), "bridge"),
            ["10.89.0.2", "10.89.0.3"]
        );

        // kill -9 of a's owner: the next sweep removes its lease.
        dead_owner.kill();
        let ids: Vec<String> = nets
            .endpoints("bridge")
            .unwrap()
            .into_iter()
            .map(|e| e.container_id)
            .collect();
        assert_eq!(ids, ["b"], "a dead owner's endpoint is not live");
        let swept = nets.sweep().unwrap();
        assert_eq!(
            swept.removed,
            vec![SweptLease {
                network: "bridge".into(),
                address: Ipv4Addr::new(10, 89, 0, 2),
                container_id: Some("a".into()),
            }]
        );
        assert_eq!(lease_files(tmp.path(), "bridge"), ["10.89.0.3"]);
        assert_eq!(nets.sweep().unwrap(), Sweep::default());

        // The lowest free address is reused.
        let c = nets.connect(&request("bridge", "c", &[], me())).unwrap();
        assert_eq!(c.address.addr, Ipv4Addr::new(10, 89, 0, 2));

        // A pid that exited (`true`, reaped) cannot own a lease.
        let mut t = Command::new("true").spawn().unwrap();
        let gone = t.id();
        t.wait().unwrap();
        assert!(matches!(
            nets.connect(&request("bridge", "d", &[], gone)),
            Err(NetworkError::OwnerGone(_))
        ));

        // A lease file its writer died writing is swept too.
        std::fs::write(tmp.path().join("networks/bridge/leases/10.89.0.9"), b"").unwrap();
        assert_eq!(nets.sweep().unwrap().removed[0].container_id, None);

        nets.disconnect("b").unwrap();
        nets.disconnect("b").unwrap();
        nets.disconnect("c").unwrap();
        assert!(lease_files(tmp.path(), "bridge").is_empty());
        assert!(!table_exists(), "no endpoints: no table");
    });
}

#[test]
fn subnet_exhaustion_is_an_error() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        nets.create("tiny", Some("10.99.0.0/30".parse().unwrap()))
            .unwrap();
        let one = nets.connect(&request("tiny", "one", &[], me())).unwrap();
        assert_eq!(one.address.to_string(), "10.99.0.2/30");
        let err = nets
            .connect(&request("tiny", "two", &[], me()))
            .unwrap_err();
        assert!(matches!(err, NetworkError::SubnetExhausted { .. }), "{err}");
        assert_eq!(lease_files(tmp.path(), "tiny"), ["10.99.0.2"]);
    });
}

#[test]
fn ports_in_use_are_refused() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        // A host process listening on the port.
        let listener = TcpListener::bind("0.0.0.0:8080").unwrap();
        let err = nets
            .connect(&request("bridge", "a", &specs(&["8080:80"]), me()))
            .unwrap_err();
        assert!(matches!(err, NetworkError::PortInUse { .. }), "{err}");
        assert_eq!(err.to_string(), "port 8080/tcp is already in use");
        assert!(
            lease_files(tmp.path(), "bridge").is_empty(),
            "nothing leased"
        );
        drop(listener);
        // UDP is its own space: 8080/udp is free while a TCP socket holds 8080.
        let _udp = UdpSocket::bind("127.0.0.1:5353").unwrap();
        let err = nets
            .connect(&request(
                "bridge",
                "a",
                &specs(&["127.0.0.1:5353:53/udp"]),
                me(),
            ))
            .unwrap_err();
        assert_eq!(err.to_string(), "port 127.0.0.1:5353/udp is already in use");

        // Another live lease holding the port.
        let a = nets
            .connect(&request(
                "bridge",
                "a",
                &specs(&["8080:80", "8080:80/udp"]),
                me(),
            ))
            .unwrap();
        assert_eq!(a.ports, specs(&["8080:80", "8080:80/udp"]));
        let err = nets
            .connect(&request(
                "bridge",
                "b",
                &specs(&["127.0.0.1:8080:81"]),
                me(),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 127.0.0.1:8080/tcp is already in use by container a"
        );
        // The same port twice in one request.
        let err = nets
            .connect(&request(
                "bridge",
                "b",
                &specs(&["9000:80", "9000:81"]),
                me(),
            ))
            .unwrap_err();
        assert_eq!(err.to_string(), "port 9000/tcp is already in use");
        // Once a is gone, the port is free again.
        nets.disconnect("a").unwrap();
        nets.connect(&request("bridge", "b", &specs(&["8080:80"]), me()))
            .unwrap();
    });
}

#[test]
fn random_ports_are_resolved_and_unique() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        let mut seen = BTreeSet::new();
        for id in ["a", "b", "c"] {
            let mut wanted = specs(&["80", "127.0.0.1::53/udp"]);
            if id == "a" {
                wanted.push("9000:90".parse().unwrap());
            }
            let e = nets.connect(&request("bridge", id, &wanted, me())).unwrap();
            for p in &e.ports {
                assert_ne!(p.host_port, 0, "{p}");
                if p.host_port != 9000 {
                    assert!(seen.insert((p.host_port, p.protocol)), "{p} reused");
                }
            }
            assert_eq!(e.ports[0].container_port, 80, "the caller's order");
            assert_eq!(e.ports[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        }
        // What the leases say is what nft has.
        let mut from_leases: Vec<u64> = nets
            .endpoints("bridge")
            .unwrap()
            .iter()
            .flat_map(|e| e.ports.iter().map(|p| u64::from(p.host_port)))
            .collect();
        let mut from_nft: Vec<u64> = dnats().into_iter().map(|d| d.1).collect();
        from_leases.sort();
        from_nft.sort();
        assert_eq!(from_leases, from_nft);
    });
}

#[test]
fn two_networks_and_remove_in_use() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        nets.create("front", None).unwrap();
        nets.create("back", None).unwrap();
        let owner = Owner::spawn();
        let f = nets
            .connect(&request("front", "web", &specs(&["8080:80"]), owner.pid()))
            .unwrap();
        let b = nets.connect(&request("back", "db", &[], me())).unwrap();
        assert_eq!(f.address.to_string(), "10.89.1.2/24");
        assert_eq!(b.address.to_string(), "10.89.2.2/24");
        assert!(
            f.peers.is_empty() && b.peers.is_empty(),
            "peers are per network"
        );
        // Both networks' rules are in, and they are isolated from each other.
        let listed = nft::list_table().unwrap().unwrap().to_string();
        for needle in [
            "bh-front",
            "bh-back",
            "10.89.1.0",
            "10.89.2.0",
            "masquerade",
            "drop",
        ] {
            assert!(listed.contains(needle), "{needle} not in {listed}");
        }

        let err = nets.remove("front").unwrap_err();
        assert_eq!(
            err.to_string(),
            "network \"front\" has active endpoints: web"
        );
        assert!(nets.get("front").is_ok());
        // Its owner dies: remove sweeps it and goes ahead.
        owner.kill();
        nets.remove("front").unwrap();
        assert!(matches!(nets.get("front"), Err(NetworkError::Unknown(_))));
        assert!(dnats().is_empty(), "the dead container's port is gone");
        let listed = nft::list_table().unwrap().unwrap().to_string();
        assert!(!listed.contains("bh-front"), "{listed}");
        assert!(listed.contains("bh-back"), "{listed}");
    });
}

#[test]
fn nft_accepts_the_ruleset_and_lists_the_dnat() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        nets.create("other", None).unwrap();
        let e = nets
            .connect(&request(
                "bridge",
                "web",
                &specs(&["8080:80", "127.0.0.1:5353:53/udp"]),
                me(),
            ))
            .unwrap();
        nets.connect(&request("other", "x", &specs(&["9090:90"]), me()))
            .unwrap();
        assert_eq!(e.address.addr, Ipv4Addr::new(10, 89, 0, 2));
        let mut got = dnats();
        got.sort();
        assert_eq!(
            got,
            vec![
                (None, 8080, "10.89.0.2".into(), 80),
                (None, 9090, "10.89.1.2".into(), 90),
                (Some("127.0.0.1".into()), 5353, "10.89.0.2".into(), 53),
            ]
        );
        // Every chain we add is there, hooked as asked.
        let table = nft::list_table().unwrap().unwrap();
        let chains: Vec<&Value> = table["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("chain"))
            .collect();
        let hook = |name: &str| {
            let c = chains.iter().find(|c| c["name"] == name).unwrap();
            (c["type"].clone(), c["hook"].clone(), c["prio"].clone())
        };
        assert_eq!(
            hook("prerouting"),
            ("nat".into(), "prerouting".into(), (-100).into())
        );
        assert_eq!(
            hook("output"),
            ("nat".into(), "output".into(), (-100).into())
        );
        assert_eq!(
            hook("postrouting"),
            ("nat".into(), "postrouting".into(), 100.into())
        );
        assert_eq!(
            hook("forward"),
            ("filter".into(), "forward".into(), 0.into())
        );
        // Rebuilding is idempotent, and other tables are left alone.
        let theirs = r#"{"nftables":[{"add":{"table":{"family":"inet","name":"theirs"}}}]}"#;
        nft::apply(&serde_json::from_str(theirs).unwrap()).unwrap();
        nets.disconnect("x").unwrap();
        assert_eq!(dnats().len(), 2);
        nets.disconnect("web").unwrap();
        assert!(!table_exists());
        let all = Command::new("nft")
            .args(["-j", "list", "tables"])
            .output()
            .unwrap();
        let all = String::from_utf8_lossy(&all.stdout);
        assert!(all.contains("theirs"), "{all}");
    });
}

#[test]
fn bad_rulesets_quote_nft() {
    in_fresh_netns(|| {
        let bad = serde_json::json!({"nftables": [{"add": {"chain": {"family": "ip", "table": "bulkhead-none", "name": "x"}}}]});
        let err = nft::apply(&bad).unwrap_err().to_string();
        assert!(err.starts_with("nft failed: "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    });
}

#[test]
fn concurrent_connects_get_distinct_addresses() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Networks::open(&root).unwrap();
        // Each thread opens its own Networks (its own lock fd), as two
        // `bulkhead run`s would; threads inherit this thread's netns.
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let nets = Networks::open(&root).unwrap();
                    let id = format!("c{i}");
                    nets.connect(&request("bridge", &id, &specs(&["80"]), me()))
                        .unwrap()
                })
            })
            .collect();
        let eps: Vec<Endpoint> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let addrs: BTreeSet<Ipv4Addr> = eps.iter().map(|e| e.address.addr).collect();
        let ports: BTreeSet<u16> = eps.iter().map(|e| e.ports[0].host_port).collect();
        assert_eq!(addrs.len(), 8);
        assert_eq!(ports.len(), 8);
        assert_eq!(addrs.last(), Some(&Ipv4Addr::new(10, 89, 0, 9)));
        assert_eq!(dnats().len(), 8);
    });
}
