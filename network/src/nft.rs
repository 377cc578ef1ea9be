//! Our nftables table, `ip bulkhead`, rebuilt whole from the state on disk
//! in one `nft -j -f -` transaction on every change: a run that died
//! without cleaning up leaves nothing once the next change rebuilds, and
//! a half-applied ruleset cannot happen (nft applies all or nothing). No
//! other table is ever read or touched.
//!
//! ```text
//! table ip bulkhead {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump ports }
//!   chain output      { type nat hook output priority -100;       fib daddr type local jump ports }
//!   chain ports       { [ip daddr HOSTIP] tcp dport 8080 dnat to 10.89.0.2:80 ... }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr 10.89.0.0/24 oifname != "bulkhead0" masquerade                # out to the world
//!     ip saddr 10.89.0.0/24 oifname "bulkhead0" ct status dnat masquerade    # hairpin
//!     ip saddr 127.0.0.0/8 oifname { our bridges } masquerade                # DNAT from 127.0.0.1
//!   }
//!   chain forward { type filter hook forward priority filter;
//!     ct status dnat accept                                                   # published ports
//!     iifname "bulkhead0" oifname { other bridges } drop                      # network isolation
//!     iifname { our bridges } accept; oifname { our bridges } accept
//!   }
//! }
//! table bridge bulkhead {                                                   # anti-spoofing
//!   chain guard { type filter hook prerouting priority filter;
//!     iifname "TAP" ether saddr != MAC drop
//!     iifname "TAP" ether type != { ip, arp } drop
//!     iifname "TAP" ip saddr != ADDRESS drop
//!     iifname "TAP" arp saddr ip != ADDRESS drop
//!     iifname "TAP" arp saddr ether != MAC drop
//!   }
//! }
//! ```
//!
//! The guest kernel is the tenant's: it may send any frame. The bridge
//! table lets each container's port carry only IPv4 and ARP from the MAC
//! and address it was leased, so it cannot pose as another container, the
//! gateway or an address outside its network, nor slip past the checks in
//! a VLAN tag.

use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::cidr::{self, Ipv4Cidr};
use crate::mac::format_mac;
use crate::{NetworkError, PortMapping};

pub(crate) const FAMILY: &str = "ip";
/// The family of the anti-spoofing table, of the same name.
pub(crate) const BRIDGE_FAMILY: &str = "bridge";
pub(crate) const TABLE: &str = "bulkhead";
const NFT: &str = "nft";

/// What one network with live endpoints contributes.
#[derive(Debug, Clone)]
pub(crate) struct NetRules {
    pub bridge: String,
    pub subnet: Ipv4Cidr,
    /// Each endpoint's address and its published ports (host ports resolved).
    pub endpoints: Vec<(Ipv4Addr, Vec<PortMapping>)>,
    /// The endpoints whose bridge port is known, to hold to their lease.
    pub guards: Vec<Guard>,
}

/// What one container may send from on its bridge port.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// The bridge port (its VM's TAP).
    pub port: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
}

/// The whole transaction. With no networks it only deletes the tables
/// (adding each first, so a table that is not there is no error).
pub(crate) fn ruleset(nets: &[NetRules]) -> Value {
    let mut cmds = Vec::new();
    for family in [FAMILY, BRIDGE_FAMILY] {
        cmds.push(json!({"add": table(family)}));
        cmds.push(json!({"delete": table(family)}));
    }
    if nets.is_empty() {
        return json!({ "nftables": cmds });
    }
    cmds.extend(guards(nets));
    cmds.push(json!({"add": table(FAMILY)}));
    cmds.push(base_chain("prerouting", "nat", "prerouting", -100));
    cmds.push(base_chain("output", "nat", "output", -100));
    cmds.push(base_chain("postrouting", "nat", "postrouting", 100));
    cmds.push(base_chain("forward", "filter", "forward", 0));
    cmds.push(json!({"add": {"chain": {"family": FAMILY, "table": TABLE, "name": "ports"}}}));

    let local = json!({"match": {"op": "==",
        "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}});
    for chain in ["prerouting", "output"] {
        cmds.push(rule(
            chain,
            vec![local.clone(), json!({"jump": {"target": "ports"}})],
        ));
    }

    for net in nets {
        for (address, ports) in &net.endpoints {
            for p in ports {
                let mut expr = Vec::new();
                if let Some(ip) = p.host_ip {
                    expr.push(eq(payload("ip", "daddr"), json!(ip.to_string())));
                }
                expr.push(eq(
                    payload(p.protocol.as_str(), "dport"),
                    json!(p.host_port),
                ));
                expr.push(json!({"dnat": {"addr": address.to_string(), "port": p.container_port}}));
                cmds.push(rule("ports", expr));
            }
        }
    }

    let bridges: Vec<&str> = nets.iter().map(|n| n.bridge.as_str()).collect();
    for net in nets {
        let from_subnet = eq(payload("ip", "saddr"), prefix(net.subnet));
        cmds.push(rule(
            "postrouting",
            vec![
                from_subnet.clone(),
                cmp("!=", meta("oifname"), json!(net.bridge)),
                json!({"masquerade": null}),
            ],
        ));
        // A container reaching a published port of its own network: without
        // this the reply would go straight back over the bridge, from an
        // address the client never talked to.
        cmds.push(rule(
            "postrouting",
            vec![
                from_subnet,
                eq(meta("oifname"), json!(net.bridge)),
                dnat_status(),
                json!({"masquerade": null}),
            ],
        ));
    }
    // The host reaching a published port on 127.0.0.1: the packet leaves
    // the bridge with a loopback source (route_localnet allows that), which
    // the container could not answer.
    cmds.push(rule(
        "postrouting",
        vec![
            eq(
                payload("ip", "saddr"),
                prefix(Ipv4Cidr {
                    addr: Ipv4Addr::new(127, 0, 0, 0),
                    prefix: 8,
                }),
            ),
            eq(meta("oifname"), names(&bridges)),
            json!({"masquerade": null}),
        ],
    ));

    // Published ports are public: a container of another network may
    // reach them too, through the host address it DNATs from.
    cmds.push(rule(
        "forward",
        vec![dnat_status(), json!({"accept": null})],
    ));
    for net in nets {
        let others: Vec<&str> = bridges
            .iter()
            .copied()
            .filter(|b| *b != net.bridge)
            .collect();
        if !others.is_empty() {
            cmds.push(rule(
                "forward",
                vec![
                    eq(meta("iifname"), json!(net.bridge)),
                    eq(meta("oifname"), names(&others)),
                    json!({"drop": null}),
                ],
            ));
        }
    }
    for key in ["iifname", "oifname"] {
        cmds.push(rule(
            "forward",
            vec![eq(meta(key), names(&bridges)), json!({"accept": null})],
        ));
    }
    json!({ "nftables": cmds })
}

/// The anti-spoofing table, if any endpoint's port is known.
fn guards(nets: &[NetRules]) -> Vec<Value> {
    let guards: Vec<&Guard> = nets.iter().flat_map(|n| &n.guards).collect();
    if guards.is_empty() {
        return Vec::new();
    }
    let mut cmds = vec![
        json!({"add": table(BRIDGE_FAMILY)}),
        base_chain_in(BRIDGE_FAMILY, "guard", "filter", "prerouting", -200),
    ];
    for g in guards {
        let (mac, address) = (json!(format_mac(&g.mac)), json!(g.address.to_string()));
        // nft adds each payload's protocol test (ether type ip, arp).
        for test in [
            cmp("!=", payload("ether", "saddr"), mac.clone()),
            cmp(
                "!=",
                payload("ether", "type"),
                json!({"set": ["ip", "arp"]}),
            ),
            cmp("!=", payload("ip", "saddr"), address.clone()),
            cmp("!=", payload("arp", "saddr ip"), address),
            cmp("!=", payload("arp", "saddr ether"), mac),
        ] {
            let expr = vec![
                eq(meta("iifname"), json!(g.port)),
                test,
                json!({"drop": null}),
            ];
            cmds.push(rule_in(BRIDGE_FAMILY, "guard", expr));
        }
    }
    cmds
}

/// Our table of `family`.
fn table(family: &str) -> Value {
    json!({"table": {"family": family, "name": TABLE}})
}

fn base_chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    base_chain_in(FAMILY, name, kind, hook, prio)
}

fn base_chain_in(family: &str, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"add": {"chain": {"family": family, "table": TABLE, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})
}

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    rule_in(FAMILY, chain, expr)
}

fn rule_in(family: &str, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family, "table": TABLE, "chain": chain, "expr": expr}}})
}

fn cmp(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn eq(left: Value, right: Value) -> Value {
    cmp("==", left, right)
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn prefix(c: Ipv4Cidr) -> Value {
    json!({"prefix": {"addr": cidr::network(c).to_string(), "len": c.prefix}})
}

fn dnat_status() -> Value {
    // ct status is a bit mask: "in" is nft's test of a bit.
    cmp("in", json!({"ct": {"key": "status"}}), json!("dnat"))
}

/// One interface name, or an anonymous set of them.
fn names(list: &[&str]) -> Value {
    match list {
        [one] => json!(one),
        many => json!({"set": many}),
    }
}

/// Runs the transaction through `nft -j -f -`, in the calling thread's netns.
pub(crate) fn apply(ruleset: &Value) -> Result<(), NetworkError> {
    run_nft(&["-j", "-f", "-"], Some(ruleset.to_string().as_bytes())).map(drop)
}

/// `nft -j list table ip bulkhead`, None when the table is not there.
#[cfg(test)]
pub(crate) fn list_table() -> Result<Option<Value>, NetworkError> {
    list_table_of(FAMILY)
}

/// `nft -j list table FAMILY bulkhead`, None when the table is not there.
#[cfg(test)]
pub(crate) fn list_table_of(family: &str) -> Result<Option<Value>, NetworkError> {
    match run_nft(&["-j", "list", "table", family, TABLE], None) {
        Ok(out) => serde_json::from_slice(&out)
            .map(Some)
            .map_err(|e| NetworkError::Nft(format!("unreadable output of nft list: {e}"))),
        Err(NetworkError::Nft(msg)) if msg.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

fn run_nft(args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, NetworkError> {
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => NetworkError::NftMissing,
            _ => NetworkError::Nft(format!("cannot run nft: {e}")),
        })?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads all of its input before it answers, so writing first
        // and reading after cannot deadlock; a write error shows as nft's
        // own failure below.
        let _ = pipe.write_all(bytes);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(format!("cannot wait for nft: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // nft's errors span lines (the input, a caret line): keep the messages.
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '~' || c == ' '))
        .collect();
    Err(NetworkError::Nft(if lines.is_empty() {
        format!("nft {} exited with {}", args.join(" "), out.status)
    } else {
        lines.join("; ")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(bridge: &str, subnet: &str, endpoints: &[(&str, &[&str])]) -> NetRules {
        NetRules {
            bridge: bridge.into(),
            subnet: subnet.parse().unwrap(),
            endpoints: endpoints
                .iter()
                .map(|(ip, ports)| {
                    (
                        ip.parse().unwrap(),
                        ports.iter().map(|p| p.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            guards: Vec::new(),
        }
    }

    fn commands(v: &Value) -> &Vec<Value> {
        v["nftables"].as_array().unwrap()
    }

    fn rules_of<'a>(v: &'a Value, chain: &str) -> Vec<&'a Value> {
        commands(v)
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| &r["expr"])
            .collect()
    }

    #[test]
    fn empty_state_deletes_the_table() {
        let v = ruleset(&[]);
        assert_eq!(
            v,
            json!({"nftables": [
                {"add": {"table": {"family": "ip", "name": "bulkhead"}}},
                {"delete": {"table": {"family": "ip", "name": "bulkhead"}}},
                {"add": {"table": {"family": "bridge", "name": "bulkhead"}}},
                {"delete": {"table": {"family": "bridge", "name": "bulkhead"}}},
            ]})
        );
    }

    #[test]
    fn only_our_table_is_named() {
        let v = ruleset(&[guarded(net(
            "bulkhead0",
            "10.89.0.0/24",
            &[("10.89.0.2", &["8080:80"])],
        ))]);
        for c in commands(&v) {
            let (verb, obj) = c.as_object().unwrap().iter().next().unwrap();
            assert!(verb == "add" || verb == "delete", "{c}");
            let (_, body) = obj.as_object().unwrap().iter().next().unwrap();
            assert!(body["family"] == "ip" || body["family"] == "bridge", "{c}");
            let table = body.get("table").unwrap_or(&body["name"]);
            assert_eq!(table, "bulkhead", "{c}");
        }
        // Add, delete, add: each rebuild starts from nothing.
        assert!(commands(&v)[1]["delete"]["table"].is_object());
        assert!(commands(&v)[3]["delete"]["table"].is_object());
        assert!(commands(&v)[4]["add"]["table"].is_object());
    }

    /// `net` with a guard on the port `t-<n>` of each of its endpoints.
    fn guarded(mut net: NetRules) -> NetRules {
        net.guards = net
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, (address, _))| Guard {
                port: format!("t-{i}"),
                mac: [2, 0, 0, 0, 0, i as u8],
                address: *address,
            })
            .collect();
        net
    }

    #[test]
    fn each_port_may_send_only_from_its_lease() {
        let v = ruleset(&[guarded(net(
            "bulkhead0",
            "10.89.0.0/24",
            &[("10.89.0.2", &[]), ("10.89.0.3", &[])],
        ))]);
        let chain = commands(&v)
            .iter()
            .find_map(|c| c["add"].get("chain").filter(|c| c["name"] == "guard"))
            .unwrap();
        assert_eq!(chain["family"], "bridge");
        assert_eq!(chain["hook"], "prerouting");
        let rules = rules_of(&v, "guard");
        assert_eq!(rules.len(), 10);
        let port = |r: &Value| r[0]["match"]["right"].clone();
        assert!(rules[..5].iter().all(|r| port(r) == "t-0"));
        assert!(rules[5..].iter().all(|r| port(r) == "t-1"));
        for r in &rules {
            assert_eq!(r[1]["match"]["op"], "!=", "{r}");
            assert_eq!(r[2], json!({"drop": null}));
        }
        let test = |r: &Value| {
            let m = &r[1]["match"];
            (
                m["left"]["payload"]["field"].as_str().unwrap().to_owned(),
                m["right"].clone(),
            )
        };
        assert_eq!(
            rules[5..].iter().map(|r| test(r)).collect::<Vec<_>>(),
            [
                ("saddr".into(), json!("02:00:00:00:00:01")),
                ("type".into(), json!({"set": ["ip", "arp"]})),
                ("saddr".into(), json!("10.89.0.3")),
                ("saddr ip".into(), json!("10.89.0.3")),
                ("saddr ether".into(), json!("02:00:00:00:00:01")),
            ]
        );
        // Without a known port (a lease from before), no table at all.
        let v = ruleset(&[net("bulkhead0", "10.89.0.0/24", &[("10.89.0.2", &[])])]);
        assert!(rules_of(&v, "guard").is_empty());
        assert_eq!(
            commands(&v)
                .iter()
                .filter(|c| c["add"]["table"]["family"] == "bridge")
                .count(),
            1,
            "only the add before the delete"
        );
    }

    #[test]
    fn base_chains_hook_where_they_should() {
        let v = ruleset(&[net("bulkhead0", "10.89.0.0/24", &[])]);
        let chains: Vec<&Value> = commands(&v)
            .iter()
            .filter_map(|c| c["add"].get("chain"))
            .collect();
        let find = |n: &str| *chains.iter().find(|c| c["name"] == n).unwrap();
        assert_eq!(find("prerouting")["type"], "nat");
        assert_eq!(find("prerouting")["prio"], -100);
        assert_eq!(find("output")["hook"], "output");
        assert_eq!(find("output")["prio"], -100);
        assert_eq!(find("postrouting")["prio"], 100);
        assert_eq!(find("forward")["type"], "filter");
        assert!(find("ports").get("hook").is_none(), "a regular chain");
        for chain in ["prerouting", "output"] {
            let rules = rules_of(&v, chain);
            assert_eq!(rules.len(), 1);
            assert_eq!(rules[0][0]["match"]["left"]["fib"]["result"], "type");
            assert_eq!(rules[0][0]["match"]["right"], "local");
            assert_eq!(rules[0][1], json!({"jump": {"target": "ports"}}));
        }
    }

    #[test]
    fn one_dnat_per_mapping() {
        let v = ruleset(&[net(
            "bulkhead0",
            "10.89.0.0/24",
            &[
                ("10.89.0.2", &["8080:80", "127.0.0.1:5353:53/udp"]),
                ("10.89.0.3", &["9090:90"]),
            ],
        )]);
        let ports = rules_of(&v, "ports");
        assert_eq!(ports.len(), 3);
        assert_eq!(
            *ports[0],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
                {"dnat": {"addr": "10.89.0.2", "port": 80}},
            ])
        );
        assert_eq!(
            *ports[1],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.1"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5353}},
                {"dnat": {"addr": "10.89.0.2", "port": 53}},
            ])
        );
        assert_eq!(ports[2][1]["dnat"]["addr"], "10.89.0.3");
    }

    #[test]
    fn masquerade_hairpin_and_loopback() {
        let v = ruleset(&[
            net("bulkhead0", "10.89.0.0/24", &[]),
            net("bh-web", "10.89.1.0/24", &[]),
        ]);
        let post = rules_of(&v, "postrouting");
        assert_eq!(post.len(), 5, "{post:?}");
        let out = post[0].as_array().unwrap();
        assert_eq!(
            out[0]["match"]["right"],
            json!({"prefix": {"addr": "10.89.0.0", "len": 24}})
        );
        assert_eq!(out[1]["match"]["op"], "!=");
        assert_eq!(out[1]["match"]["right"], "bulkhead0");
        assert_eq!(out[2], json!({"masquerade": null}));
        let hairpin = post[1].as_array().unwrap();
        assert_eq!(hairpin[1]["match"]["op"], "==");
        assert_eq!(
            hairpin[2]["match"]["left"],
            json!({"ct": {"key": "status"}})
        );
        assert_eq!(hairpin[2]["match"]["right"], "dnat");
        assert_eq!(post[3][0]["match"]["right"]["prefix"]["addr"], "10.89.1.0");
        let lo = post[4].as_array().unwrap();
        assert_eq!(lo[0]["match"]["right"]["prefix"]["addr"], "127.0.0.0");
        assert_eq!(
            lo[1]["match"]["right"],
            json!({"set": ["bulkhead0", "bh-web"]})
        );
    }

    #[test]
    fn forward_isolates_networks() {
        let v = ruleset(&[
            net("bulkhead0", "10.89.0.0/24", &[]),
            net("bh-web", "10.89.1.0/24", &[]),
        ]);
        let fwd = rules_of(&v, "forward");
        assert_eq!(fwd.len(), 5, "{fwd:?}");
        assert_eq!(fwd[0][1], json!({"accept": null}));
        assert_eq!(fwd[1][0]["match"]["right"], "bulkhead0");
        assert_eq!(fwd[1][1]["match"]["right"], "bh-web");
        assert_eq!(fwd[1][2], json!({"drop": null}));
        assert_eq!(fwd[2][0]["match"]["right"], "bh-web");
        assert_eq!(fwd[2][1]["match"]["right"], "bulkhead0");
        assert_eq!(fwd[3][0]["match"]["left"]["meta"]["key"], "iifname");
        assert_eq!(fwd[4][0]["match"]["left"]["meta"]["key"], "oifname");
        assert_eq!(fwd[4][1], json!({"accept": null}));
        // One network: nothing to isolate from.
        let one = ruleset(&[net("bulkhead0", "10.89.0.0/24", &[])]);
        assert!(rules_of(&one, "forward")
            .iter()
            .all(|r| r[1] != json!({"drop": null}) && r.as_array().unwrap().len() == 2));
    }
}
