//! Tests of `Networks` against the kernel: each runs on a thread of its
//! own in a fresh network namespace, so nft, bridges and port probes never
//! touch the host's network.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::*;
use crate::testutil::{self, fresh_netns, in_fresh_netns, inside};
use bulkhead_netlink::{Netlink, Route};

/// A `Networks` for a test, which makes the TAP (`t-<id>`) each container
/// it connects needs, in the calling thread's netns.
struct Fixture {
    nets: Networks,
    taps: RefCell<BTreeMap<String, File>>,
}

impl Fixture {
    fn open(root: &Path) -> Fixture {
        Fixture {
            nets: Networks::open(root).unwrap(),
            taps: RefCell::default(),
        }
    }

    fn join(
        &self,
        network: &str,
        id: &str,
        ports: &[PortMapping],
        owner: u32,
    ) -> Result<Endpoint, NetworkError> {
        let tap = format!("t-{id}");
        self.taps
            .borrow_mut()
            .entry(tap.clone())
            .or_insert_with(|| testutil::tap(&tap));
        self.nets.connect(&ConnectRequest {
            network,
            container_id: id,
            name: Some(id),
            tap: &tap,
            mac: mac_for(id),
            ports,
            owner_pid: owner,
        })
    }
}

impl std::ops::Deref for Fixture {
    type Target = Networks;
    fn deref(&self) -> &Networks {
        &self.nets
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

/// Either of our tables: the NAT and filter one, or the anti-spoofing one.
fn table_exists() -> bool {
    nft::list_table().unwrap().is_some() || nft::list_table_of("bridge").unwrap().is_some()
}

#[test]
fn open_defines_the_bridge_network() {
    let tmp = tempfile::tempdir().unwrap();
    let nets = Fixture::open(tmp.path());
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
    // In a netns of its own: `create` skips subnets the host routes.
    in_fresh_netns(create_picks_distinct_subnets_here);
}

fn create_picks_distinct_subnets_here() {
    let tmp = tempfile::tempdir().unwrap();
    let nets = Fixture::open(tmp.path());
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
        let nets = Fixture::open(tmp.path());
        let dead_owner = Owner::spawn();
        let a = nets.join("bridge", "a", &[], dead_owner.pid()).unwrap();
        let b = nets.join("bridge", "b", &[], me()).unwrap();
        assert_eq!(a.address.to_string(), "10.89.0.2/24");
        assert_eq!(b.address.to_string(), "10.89.0.3/24");
        assert_eq!(b.gateway, Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(b.mac, mac_for("b"));
        assert_eq!(b.peers, vec![("a".to_owned(), Ipv4Addr::new(10, 89, 0, 2))]);
        assert!(matches!(
            nets.join("bridge", "b", &[], me()),
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
        let c = nets.join("bridge", "c", &[], me()).unwrap();
        assert_eq!(c.address.addr, Ipv4Addr::new(10, 89, 0, 2));

        // A pid that exited (`true`, reaped) cannot own a lease.
        let mut t = Command::new("true").spawn().unwrap();
        let gone = t.id();
        t.wait().unwrap();
        assert!(matches!(
            nets.join("bridge", "d", &[], gone),
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
        let nets = Fixture::open(tmp.path());
        nets.create("tiny", Some("10.99.0.0/30".parse().unwrap()))
            .unwrap();
        let one = nets.join("tiny", "one", &[], me()).unwrap();
        assert_eq!(one.address.to_string(), "10.99.0.2/30");
        let err = nets.join("tiny", "two", &[], me()).unwrap_err();
        assert!(matches!(err, NetworkError::SubnetExhausted { .. }), "{err}");
        assert_eq!(lease_files(tmp.path(), "tiny"), ["10.99.0.2"]);
    });
}

#[test]
fn ports_in_use_are_refused() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Fixture::open(tmp.path());
        // A host process listening on the port.
        let listener = TcpListener::bind("0.0.0.0:8080").unwrap();
        let err = nets
            .join("bridge", "a", &specs(&["8080:80"]), me())
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
            .join("bridge", "a", &specs(&["127.0.0.1:5353:53/udp"]), me())
            .unwrap_err();
        assert_eq!(err.to_string(), "port 127.0.0.1:5353/udp is already in use");

        // Another live lease holding the port.
        let a = nets
            .join("bridge", "a", &specs(&["8080:80", "8080:80/udp"]), me())
            .unwrap();
        assert_eq!(a.ports, specs(&["8080:80", "8080:80/udp"]));
        let err = nets
            .join("bridge", "b", &specs(&["127.0.0.1:8080:81"]), me())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 127.0.0.1:8080/tcp is already in use by container a"
        );
        // The same port twice in one request.
        let err = nets
            .join("bridge", "b", &specs(&["9000:80", "9000:81"]), me())
            .unwrap_err();
        assert_eq!(err.to_string(), "port 9000/tcp is already in use");
        // Once a is gone, the port is free again.
        nets.disconnect("a").unwrap();
        nets.join("bridge", "b", &specs(&["8080:80"]), me())
            .unwrap();
    });
}

#[test]
fn random_ports_are_resolved_and_unique() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Fixture::open(tmp.path());
        let mut seen = BTreeSet::new();
        for id in ["a", "b", "c"] {
            let mut wanted = specs(&["80", "127.0.0.1::53/udp"]);
            if id == "a" {
                wanted.push("9000:90".parse().unwrap());
            }
            let e = nets.join("bridge", id, &wanted, me()).unwrap();
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
        let nets = Fixture::open(tmp.path());
        nets.create("front", None).unwrap();
        nets.create("back", None).unwrap();
        let owner = Owner::spawn();
        let f = nets
            .join("front", "web", &specs(&["8080:80"]), owner.pid())
            .unwrap();
        let b = nets.join("back", "db", &[], me()).unwrap();
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
        let nets = Fixture::open(tmp.path());
        nets.create("other", None).unwrap();
        let e = nets
            .join(
                "bridge",
                "web",
                &specs(&["8080:80", "127.0.0.1:5353:53/udp"]),
                me(),
            )
            .unwrap();
        nets.join("other", "x", &specs(&["9090:90"]), me()).unwrap();
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
                    let nets = Fixture::open(&root);
                    let id = format!("c{i}");
                    nets.join("bridge", &id, &specs(&["80"]), me()).unwrap()
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

fn link(nl: &mut Netlink, name: &str) -> bulkhead_netlink::Link {
    nl.link_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no link {name}"))
}

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
fn connect_makes_the_bridge_and_enslaves_the_tap() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Fixture::open(tmp.path());
        let mut nl = Netlink::open().unwrap();
        // A new netns inherits the host's setting (1 on any host that
        // forwards already): start from 0 so connect is seen to set it.
        let inherited = sysctl("/proc/sys/net/ipv4/ip_forward");
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        assert_eq!(sysctl("/proc/sys/net/ipv4/ip_forward"), "0");
        nets.join("bridge", "a", &[], me()).unwrap();
        let br = link(&mut nl, "bulkhead0");
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(br.up);
        assert_eq!(br.mac, Some(bridge::bridge_mac("bulkhead0")));
        assert_eq!(
            nl.addresses(br.index).unwrap(),
            vec!["10.89.0.1/24".parse::<Ipv4Cidr>().unwrap()]
        );
        assert_eq!(
            sysctl("/proc/sys/net/ipv4/conf/bulkhead0/route_localnet"),
            "1"
        );
        assert_eq!(sysctl("/proc/sys/net/ipv4/ip_forward"), "1");
        let tap = link(&mut nl, "t-a");
        assert_eq!(tap.master, Some(br.index));
        assert!(tap.up);

        // A second container: the bridge is kept as it is, and its MAC
        // does not follow the ports.
        nets.join("bridge", "b", &[], me()).unwrap();
        assert_eq!(link(&mut nl, "t-b").master, Some(br.index));
        assert_eq!(link(&mut nl, "bulkhead0").mac, br.mac);

        // A stale address (a bridge left by an older network) is dropped.
        nl.add_address(br.index, "10.1.1.1/24".parse().unwrap())
            .unwrap();
        nets.join("bridge", "c", &[], me()).unwrap();
        assert_eq!(nl.addresses(br.index).unwrap().len(), 1);

        // User networks get their own bridge, which `remove` deletes.
        nets.create("web", None).unwrap();
        nets.join("web", "w", &[], me()).unwrap();
        let web = link(&mut nl, "bh-web");
        assert_eq!(link(&mut nl, "t-w").master, Some(web.index));
        nets.disconnect("w").unwrap();
        nets.remove("web").unwrap();
        assert!(nl.link_by_name("bh-web").unwrap().is_none());

        // This thread's /proc/sys was this netns's: another fresh one
        // inherits the host's setting, which is untouched.
        let other = fresh_netns();
        inside(&other, move || {
            assert_eq!(sysctl("/proc/sys/net/ipv4/ip_forward"), inherited);
        });
    });
}

#[test]
fn a_missing_tap_leaves_nothing() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        let err = nets
            .connect(&ConnectRequest {
                network: "bridge",
                container_id: "a",
                name: None,
                tap: "nope",
                mac: mac_for("a"),
                ports: &specs(&["8080:80"]),
                owner_pid: me(),
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no TAP named \"nope\" in the caller's network namespace"
        );
        assert!(lease_files(tmp.path(), "bridge").is_empty());
        assert!(!table_exists());
    });
}

/// Connects to `to` from the netns `ns` (None: this thread's) and returns
/// what the server said.
fn ask(ns: Option<&File>, to: &str) -> std::io::Result<String> {
    let to: SocketAddr = to.parse().unwrap();
    let connect = || TcpStream::connect_timeout(&to, Duration::from_secs(5));
    let mut stream = match ns {
        Some(ns) => inside(ns, connect)?,
        None => connect()?,
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut said = String::new();
    stream.read_to_string(&mut said)?;
    Ok(said)
}

/// Turns br_netfilter's calls into nftables off in this thread's netns,
/// where they are per netns (Linux 5.3 on); elsewhere leaves them be.
fn bridge_netfilter_off() {
    const PATH: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let release = nix::sys::utsname::uname().unwrap();
    let release = release.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if std::path::Path::new(PATH).exists() && (major, minor) >= (5, 3) {
        std::fs::write(PATH, "0").unwrap();
    }
}

/// Answers every connection to `listener` with the address it came from.
fn tell_peers(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            if let Ok(peer) = conn.peer_addr() {
                let _ = conn.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
}

/// A container as these tests stand it in: a netns behind a veth whose
/// host end (`t-<id>`) plays its VM's TAP, connected to `network`, with
/// the lease's MAC, address and default route, as the agent gives a VM.
fn veth_container(
    nets: &Networks,
    network: &str,
    id: &str,
    ports: &[PortMapping],
) -> (File, Endpoint) {
    let ns = fresh_netns();
    let host_end = format!("t-{id}");
    let mut nl = Netlink::open().unwrap();
    nl.add_veth_pair(&host_end, "ct0").unwrap();
    let ct0 = nl.link_index("ct0").unwrap();
    nl.set_netns(ct0, ns.as_fd()).unwrap();
    let ep = nets
        .connect(&ConnectRequest {
            network,
            container_id: id,
            name: Some(id),
            tap: &host_end,
            mac: mac_for(id),
            ports,
            owner_pid: me(),
        })
        .unwrap();
    inside(&ns, || {
        let mut nl = Netlink::open().unwrap();
        let ct0 = nl.link_index("ct0").unwrap();
        // The MAC the VM is given: the only one its port lets through.
        nl.set_mac(ct0, mac_for(id)).unwrap();
        nl.add_address(ct0, ep.address).unwrap();
        nl.set_up(ct0, true).unwrap();
        nl.add_route(Route {
            dst: None,
            gateway: Some(ep.gateway),
            oif: Some(ct0),
        })
        .unwrap();
    });
    (ns, ep)
}

#[test]
fn published_ports_carry_traffic() {
    in_fresh_netns(|| {
        // This netns is the host. The container is a netns behind a veth
        // whose host end stands in for the VM's TAP; `lan` is another
        // machine on the host's LAN.
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        let (ct, _) = veth_container(&nets, "bridge", "web", &specs(&["8080:80"]));
        let lan = fresh_netns();
        let mut nl = Netlink::open().unwrap();
        nl.add_veth_pair("lan0", "lan1").unwrap();
        let lan0 = nl.link_index("lan0").unwrap();
        nl.add_address(lan0, "192.168.9.1/24".parse().unwrap())
            .unwrap();
        nl.set_up(lan0, true).unwrap();
        let lan1 = nl.link_index("lan1").unwrap();
        nl.set_netns(lan1, lan.as_fd()).unwrap();
        inside(&lan, || {
            let mut nl = Netlink::open().unwrap();
            let lan1 = nl.link_index("lan1").unwrap();
            nl.add_address(lan1, "192.168.9.2/24".parse().unwrap())
                .unwrap();
            nl.set_up(lan1, true).unwrap();
        });

        tell_peers(inside(&ct, || TcpListener::bind("0.0.0.0:80")).unwrap());
        tell_peers(inside(&lan, || TcpListener::bind("192.168.9.2:7000")).unwrap());

        // The host itself, on 127.0.0.1 (output chain, route_localnet, and
        // the loopback source masqueraded to the gateway).
        assert_eq!(ask(None, "127.0.0.1:8080").unwrap(), "10.89.0.1");
        // Another machine (prerouting): the container sees the client.
        assert_eq!(ask(Some(&lan), "192.168.9.1:8080").unwrap(), "192.168.9.2");
        // The container out to the LAN, masqueraded as the host.
        assert_eq!(ask(Some(&ct), "192.168.9.2:7000").unwrap(), "192.168.9.1");
        // The container through its own published port (hairpin). With
        // br_netfilter, this packet is DNAT'd on the bridge and bridged back
        // out the port it came in by, which takes hairpin mode on that port
        // (which bulkhead-netlink cannot set yet); without it the packet is
        // routed, and the hairpin masquerade is what makes it work. Test
        // that path, as on a host without br_netfilter.
        bridge_netfilter_off();
        assert_eq!(ask(Some(&ct), "10.89.0.1:8080").unwrap(), "10.89.0.1");

        nets.disconnect("web").unwrap();
        let gone = ask(None, "127.0.0.1:8080").unwrap_err();
        assert_eq!(gone.kind(), std::io::ErrorKind::ConnectionRefused, "{gone}");
    });
}

#[test]
fn networks_are_isolated_but_published_ports_are_public() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        nets.create("other", None).unwrap();
        let mut containers = Vec::new();
        for (network, id, ports) in [("bridge", "a", vec![]), ("other", "b", specs(&["8080:80"]))] {
            let (ns, ep) = veth_container(&nets, network, id, &ports);
            tell_peers(inside(&ns, || TcpListener::bind("0.0.0.0:80")).unwrap());
            containers.push((ns, ep));
        }
        let (a, b) = (&containers[0], &containers[1]);
        // a cannot reach b's address across networks...
        let b_addr = format!("{}:80", b.1.address.addr);
        let to: SocketAddr = b_addr.parse().unwrap();
        let direct = inside(&a.0, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
        });
        assert!(direct.is_err(), "isolation");
        // ...but can reach b's published port through the host.
        let via_host = format!("{}:8080", a.1.gateway);
        assert_eq!(ask(Some(&a.0), &via_host).unwrap(), "10.89.1.1");
    });
}

#[test]
fn a_container_sends_only_from_the_mac_and_address_it_was_leased() {
    in_fresh_netns(|| {
        let tmp = tempfile::tempdir().unwrap();
        let nets = Networks::open(tmp.path()).unwrap();
        let (ct, ep) = veth_container(&nets, "bridge", "a", &[]);
        // Another container's address, or any other in the subnet: what a
        // hostile guest kernel may put on its interface.
        let other: Ipv4Cidr = "10.89.0.99/24".parse().unwrap();
        inside(&ct, || {
            let mut nl = Netlink::open().unwrap();
            let ct0 = nl.link_index("ct0").unwrap();
            nl.add_address(ct0, other).unwrap();
        });
        let host = UdpSocket::bind((ep.gateway, 7001)).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let send = |from: Ipv4Addr, what: &str| {
            inside(&ct, || {
                let s = UdpSocket::bind((from, 0)).unwrap();
                // A spoofed ARP leaves the neighbour unresolved: no error.
                let _ = s.send_to(what.as_bytes(), (ep.gateway, 7001));
            })
        };
        let received = || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = host.recv_from(&mut buf) {
                got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()));
            }
            got
        };
        let own = std::net::IpAddr::V4(ep.address.addr);
        // Until the path works (a fresh port, the gateway's ARP).
        let mut got = Vec::new();
        for _ in 0..10 {
            send(ep.address.addr, "own");
            got = received();
            if !got.is_empty() {
                break;
            }
        }
        assert!(!got.is_empty(), "nothing arrives from the leased address");
        assert!(
            got.iter().all(|(what, from)| what == "own" && *from == own),
            "{got:?}"
        );
        // The gateway is resolved now: only the IP check stands in the way.
        send(other.addr, "spoofed address");
        send(ep.address.addr, "own");
        assert_eq!(received(), [("own".to_string(), own)]);
        inside(&ct, || {
            let mut nl = Netlink::open().unwrap();
            let ct0 = nl.link_index("ct0").unwrap();
            nl.set_mac(ct0, [0x02, 0, 0, 0, 0, 0x99]).unwrap();
        });
        send(ep.address.addr, "spoofed mac");
        assert_eq!(received(), []);

        nets.disconnect("a").unwrap();
        assert!(!table_exists());
    });
}
