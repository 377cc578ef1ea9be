//! The container's network, made by the process that holds its VM (so it
//! lives exactly as long as the VM): a TAP joined to a bulkhead network's
//! bridge, or plumbed into the network namespace an engine made; and what
//! the agent is told to give eth0.
//!
//! The TAP is not persistent: it goes with this process, even after
//! `kill -9`. The lease (address, published ports) is given back when
//! [`Attached`] drops, and otherwise swept by the next command once this
//! process is gone.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_network::{engine, ConnectRequest, Endpoint, Networks, PortMapping};
use bulkhead_protocol::{Ipv4Prefix, NetworkFiles, NetworkSpec, RouteSpec};
use bulkhead_vmm::devices::virtio::net::Tap;
use serde::{Deserialize, Serialize};

use crate::paths;

/// The MTU of a bulkhead bridge's ports.
const BRIDGE_MTU: u32 = 1500;
/// The TAP's name inside an engine's network namespace (nothing else of
/// ours lives there).
const ENGINE_TAP: &str = "bhtap0";

/// What network a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPlan {
    /// Only `lo` (`--network none`).
    #[default]
    None,
    /// A port on a bulkhead network's bridge (`bridge`, or one made by
    /// `bulkhead network create`).
    Bridge(BridgeRequest),
    /// The network namespace an engine made (an OCI bundle's
    /// `linux.namespaces`): the guest takes over its interface.
    Namespace(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRequest {
    pub network: String,
    /// The container's id: names its TAP and its lease.
    pub container_id: String,
    /// How other containers on the network reach it (`--name`).
    pub name: Option<String>,
    pub hostname: String,
    pub ports: Vec<PortMapping>,
    /// `--dns`: nameservers instead of the host's.
    pub dns: Vec<Ipv4Addr>,
}

/// A container's network while its VM runs.
pub struct Attached {
    /// For the VM (taken at build or restore).
    pub tap: Tap,
    /// For the agent.
    pub spec: NetworkSpec,
    /// Released when the container's network goes.
    _lease: Option<Lease>,
}

/// Gives the address and ports back when the container's VM is gone.
struct Lease {
    networks: Networks,
    container_id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.networks.disconnect(&self.container_id) {
            eprintln!(
                "bulkhead: cannot release the network lease of {}: {e}",
                self.container_id
            );
        }
    }
}

/// Makes `plan`'s network; `None` for `--network none`.
pub fn attach(plan: &NetworkPlan) -> anyhow::Result<Option<Attached>> {
    match plan {
        NetworkPlan::None => Ok(None),
        NetworkPlan::Bridge(req) => attach_bridge(req).map(Some),
        NetworkPlan::Namespace(path) => attach_namespace(path),
    }
}

fn attach_bridge(req: &BridgeRequest) -> anyhow::Result<Attached> {
    let networks = Networks::open(&paths::root())?;
    let tap = Tap::open(&tap_name(&req.container_id))?;
    let mac = bulkhead_network::mac_for(&req.container_id);
    let endpoint = networks.connect(&ConnectRequest {
        network: &req.network,
        container_id: &req.container_id,
        name: req.name.as_deref(),
        tap: tap.name(),
        mac,
        ports: &req.ports,
        owner_pid: std::process::id(),
    })?;
    let lease = Lease {
        networks,
        container_id: req.container_id.clone(),
    };
    let spec = NetworkSpec {
        mac,
        mtu: BRIDGE_MTU,
        addresses: vec![prefix(endpoint.address.addr, endpoint.address.prefix)],
        routes: vec![RouteSpec {
            destination: None,
            gateway: Some(endpoint.gateway),
        }],
        files: Some(NetworkFiles {
            hosts: hosts_file(&endpoint, &req.hostname),
            resolv_conf: resolv_conf(&req.dns),
            hostname: Some(req.hostname.clone()),
        }),
    };
    Ok(Attached {
        tap,
        spec,
        _lease: Some(lease),
    })
}

/// An engine's namespace: a TAP made inside it and redirected to the
/// engine's interface both ways; the guest takes that interface's MAC,
/// addresses and routes. A namespace with only `lo` (an engine's
/// `--network none`) gives the container only `lo` too.
fn attach_namespace(path: &std::path::Path) -> anyhow::Result<Option<Attached>> {
    let ns = File::open(path)
        .with_context(|| format!("cannot open the network namespace {}", path.display()))?;
    let tap = bulkhead_netlink::in_netns(ns.as_fd(), || Tap::open(ENGINE_TAP))
        .with_context(|| format!("cannot enter the network namespace {}", path.display()))??;
    let link = match engine::plumb(ns.as_fd(), ENGINE_TAP) {
        Ok(link) => link,
        Err(bulkhead_network::NetworkError::NoEngineLink { .. }) => return Ok(None),
        Err(e) => return Err(e).context(format!("in the network namespace {}", path.display())),
    };
    let spec = NetworkSpec {
        mac: link.mac,
        mtu: link.mtu,
        addresses: link
            .addresses
            .iter()
            .map(|a| prefix(a.addr, a.prefix))
            .collect(),
        routes: link
            .routes
            .iter()
            .map(|r| RouteSpec {
                destination: r.dst.map(|d| prefix(d.addr, d.prefix)),
                gateway: r.gateway,
            })
            .collect(),
        // The engine binds its own /etc/hosts and resolv.conf.
        files: None,
    };
    Ok(Some(Attached {
        tap,
        spec,
        _lease: None,
    }))
}

fn prefix(addr: Ipv4Addr, prefix: u8) -> Ipv4Prefix {
    Ipv4Prefix { addr, prefix }
}

/// `bh` and 12 hex digits of a digest of the id: unique among running
/// containers, whatever their names, within IFNAMSIZ.
pub fn tap_name(container_id: &str) -> String {
    let digest = bulkhead_rootfs::Digest::of(container_id.as_bytes());
    format!("bh{}", &digest.hex()[..12])
}

/// Docker's /etc/hosts: localhost, the container itself, and (on a user
/// network) the other named containers on it.
fn hosts_file(e: &Endpoint, hostname: &str) -> String {
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut names = vec![hostname.to_string()];
    if let Some(n) = e.name.as_ref().filter(|n| *n != hostname) {
        names.push(n.clone());
    }
    text.push_str(&format!("{}\t{}\n", e.address.addr, names.join(" ")));
    for (name, addr) in &e.peers {
        text.push_str(&format!("{addr}\t{name}\n"));
    }
    text
}

/// `--dns` servers, else the host's resolv.conf without loopback servers
/// (they mean nothing inside the VM), else public ones, as Docker does.
fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    if !dns.is_empty() {
        return dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    }
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    filter_resolv_conf(&host)
}

fn filter_resolv_conf(host: &str) -> String {
    let mut servers = 0;
    let mut out = String::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("nameserver"), Some(addr)) => {
                let usable = addr
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| !a.is_loopback());
                if usable {
                    servers += 1;
                    out.push_str(line);
                    out.push('\n');
                }
            }
            (Some("search" | "domain" | "options"), _) => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_nameservers_are_dropped() {
        let host = "# generated\nnameserver 127.0.0.53\nsearch example.org\noptions edns0\n";
        assert_eq!(
            filter_resolv_conf(host),
            "search example.org\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        let host = "nameserver 10.0.0.2\nnameserver ::1\n";
        assert_eq!(filter_resolv_conf(host), "nameserver 10.0.0.2\n");
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        let a = tap_name("a-very-long-container-name-1");
        let b = tap_name("a-very-long-container-name-2");
        assert_ne!(a, b);
        assert_eq!(a.len(), 14);
        assert_eq!(tap_name("web"), tap_name("web"));
    }
}
