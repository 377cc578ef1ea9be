//! Host networking for standalone `bulkhead run`: user networks (a Linux
//! bridge and a subnet each), address leases for containers, published
//! ports (DNAT in our own nftables table) and a sweep that removes what a
//! dead container left behind.
//!
//! State lives under `<root>/networks/`:
//!
//! ```text
//! lock                          flock held around every read and change
//! <name>/network.json           the definition (NetworkDef)
//! <name>/leases/<ip>            one endpoint: container, MAC, ports, owner
//! ```
//!
//! The files are the truth; the kernel state (bridges, the nftables table)
//! is rebuilt from them, so a run that died by SIGKILL is cleaned up by
//! the next change without anyone remembering what it did.

mod bridge;
mod cidr;
pub mod engine;
mod error;
mod ipam;
mod lease;
mod lock;
mod mac;
mod nft;
mod ports;
mod store;
mod sweep;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use bulkhead_netlink::Netlink;
use serde::{Deserialize, Serialize};

pub use bulkhead_netlink::{Ipv4Cidr, NetlinkError, Route};
pub use error::NetworkError;
pub use lease::Lease;
pub use mac::{format_mac, mac_for, parse_mac};
pub use ports::{PortMapping, Protocol};
pub use store::{NetworkDef, DEFAULT_BRIDGE, DEFAULT_NETWORK, DEFAULT_SUBNET};
pub use sweep::{Sweep, SweptLease};

use error::io;
use lock::StateLock;
use store::Store;

/// What `connect` needs to put a container on a network.
#[derive(Clone, Debug)]
pub struct ConnectRequest<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    /// The container's name, which its peers' /etc/hosts will know it by.
    pub name: Option<&'a str>,
    /// An existing TAP in the caller's netns (the VM's end of virtio-net).
    pub tap: &'a str,
    pub mac: [u8; 6],
    pub ports: &'a [PortMapping],
    /// The process whose life is the endpoint's: when it is gone the
    /// lease is stale (usually the container's monitor).
    pub owner_pid: u32,
}

/// A container on a network, as its guest should be configured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    pub network: NetworkDef,
    pub container_id: String,
    pub name: Option<String>,
    /// The container's address with the subnet's prefix ("10.89.0.2/24").
    #[serde(with = "cidr::serde_str")]
    pub address: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    #[serde(with = "mac::serde_str")]
    pub mac: [u8; 6],
    /// Host ports resolved (never 0).
    pub ports: Vec<PortMapping>,
    /// The other named containers on the network, for /etc/hosts.
    pub peers: Vec<(String, Ipv4Addr)>,
}

/// The network state under one root.
pub struct Networks {
    store: Store,
}

/// A live lease and where it is.
struct LiveLease {
    network: String,
    address: Ipv4Addr,
    lease: Lease,
}

impl Networks {
    /// Opens (creating if needed) `<root>/networks`, with the predefined
    /// network "bridge" (bridge bulkhead0, 10.89.0.0/24).
    pub fn open(root: &Path) -> Result<Networks, NetworkError> {
        let dir = root.join("networks");
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        let networks = Networks {
            store: Store::new(dir),
        };
        let _lock = networks.lock()?;
        if networks.store.read(DEFAULT_NETWORK)?.is_none() {
            networks.store.write(&NetworkDef::predefined())?;
        }
        Ok(networks)
    }

    fn lock(&self) -> Result<StateLock, NetworkError> {
        StateLock::acquire(&self.store.dir().join(store::LOCK))
    }

    /// Defines a network; without `subnet`, the first free 10.89.N.0/24.
    /// Its bridge is made when its first container connects.
    pub fn create(&self, name: &str, subnet: Option<Ipv4Cidr>) -> Result<NetworkDef, NetworkError> {
        store::check_name(name)?;
        let _lock = self.lock()?;
        if self.store.read(name)?.is_some() {
            return Err(NetworkError::Exists(name.to_owned()));
        }
        let defs = self.store.list()?;
        let subnet = match subnet {
            None => store::free_subnet(&defs, &host_routes()?)?,
            Some(s) => {
                store::check_subnet(s)?;
                if let Some(other) = defs.iter().find(|d| cidr::overlaps(d.subnet, s)) {
                    return Err(NetworkError::SubnetOverlap {
                        subnet: s.to_string(),
                        other: other.name.clone(),
                        other_subnet: other.subnet.to_string(),
                    });
                }
                s
            }
        };
        let def = NetworkDef::new(name, subnet);
        if let Some(other) = defs.iter().find(|d| d.bridge == def.bridge) {
            return Err(NetworkError::BridgeTaken {
                network: name.to_owned(),
                bridge: def.bridge,
                other: other.name.clone(),
            });
        }
        self.store.write(&def)?;
        Ok(def)
    }

    /// Every network, by name.
    pub fn list(&self) -> Result<Vec<NetworkDef>, NetworkError> {
        let _lock = self.lock()?;
        self.store.list()
    }

    pub fn get(&self, name: &str) -> Result<NetworkDef, NetworkError> {
        let _lock = self.lock()?;
        self.store.get(name)
    }

    /// Removes a network that no live container is on. Refuses "bridge".
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        let def = self.store.get(name)?;
        if def.name == DEFAULT_NETWORK {
            return Err(NetworkError::Predefined(def.name));
        }
        let swept = sweep::dead_leases(&self.store)?;
        let users: BTreeSet<String> = self
            .live_leases()?
            .into_iter()
            .filter(|l| l.network == def.name)
            .map(|l| l.lease.name.unwrap_or(l.lease.container_id))
            .collect();
        if !users.is_empty() {
            return Err(NetworkError::InUse {
                network: def.name,
                containers: users.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        // The bridge first: should deleting it fail, the network is still
        // there for a retry to find.
        bridge::delete(&mut Netlink::open()?, &def.bridge)?;
        self.store.remove(&def.name)?;
        if !swept.removed.is_empty() {
            self.rebuild()?;
        }
        Ok(())
    }

    /// The live endpoints of a network, by address.
    pub fn endpoints(&self, name: &str) -> Result<Vec<Endpoint>, NetworkError> {
        let _lock = self.lock()?;
        let def = self.store.get(name)?;
        let live: Vec<LiveLease> = self
            .live_leases()?
            .into_iter()
            .filter(|l| l.network == def.name)
            .collect();
        Ok(live
            .iter()
            .map(|l| endpoint(&def, l.address, &l.lease, &live))
            .collect())
    }

    /// Puts a container on a network: sweeps dead leases, checks and
    /// resolves the published ports, leases the lowest free address, makes
    /// sure the network's bridge is up (gateway address, route_localnet,
    /// ip_forward), enslaves `req.tap` to it and rebuilds the nftables
    /// table. All of it happens in the calling thread's netns, which must
    /// be the host's (where the TAP is and the DNAT applies). On error
    /// nothing is left leased.
    pub fn connect(&self, req: &ConnectRequest<'_>) -> Result<Endpoint, NetworkError> {
        let _lock = self.lock()?;
        let def = self.store.get(req.network)?;
        sweep::dead_leases(&self.store)?;
        let owner_start_time =
            lease::start_time(req.owner_pid).ok_or(NetworkError::OwnerGone(req.owner_pid))?;
        let live = self.live_leases()?;
        if live
            .iter()
            .any(|l| l.network == def.name && l.lease.container_id == req.container_id)
        {
            return Err(NetworkError::AlreadyConnected {
                container: req.container_id.to_owned(),
                network: def.name,
            });
        }
        let taken: Vec<(String, PortMapping)> = live
            .iter()
            .flat_map(|l| {
                let who = l.lease.name.as_ref().unwrap_or(&l.lease.container_id);
                l.lease.ports.iter().map(move |p| (who.clone(), p.clone()))
            })
            .collect();
        let ports = ports::resolve(req.ports, &taken)?;
        let lease = Lease {
            container_id: req.container_id.to_owned(),
            name: req.name.map(str::to_owned),
            mac: req.mac,
            ports,
            owner_pid: req.owner_pid,
            owner_start_time,
            tap: Some(req.tap.to_owned()),
        };
        let dir = self.store.leases_dir(&def.name);
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        // The dead were swept: every lease file left is held.
        let mut leased: Vec<Ipv4Addr> = lease::read_all(&dir)?.iter().map(|h| h.address).collect();
        let address = loop {
            let ip = ipam::lowest_free(def.subnet, def.gateway, &leased).ok_or_else(|| {
                NetworkError::SubnetExhausted {
                    network: def.name.clone(),
                    subnet: def.subnet.to_string(),
                }
            })?;
            if lease::create(&dir, ip, &lease)? {
                break ip;
            }
            // Someone outside the lock made it (a stray file): skip it.
            leased.push(ip);
        };
        if let Err(e) = self.join(&def, req.tap) {
            let _ = lease::remove(&dir.join(address.to_string()));
            return Err(e);
        }
        let peers: Vec<LiveLease> = live.into_iter().filter(|l| l.network == def.name).collect();
        Ok(endpoint(&def, address, &lease, &peers))
    }

    /// Takes a container off every network it is on and rebuilds the
    /// table. A container on none is fine (idempotent).
    pub fn disconnect(&self, container_id: &str) -> Result<(), NetworkError> {
        let _lock = self.lock()?;
        let mut changed = !sweep::dead_leases(&self.store)?.removed.is_empty();
        for def in self.store.list()? {
            for held in lease::read_all(&self.store.leases_dir(&def.name))? {
                if held.lease.is_some_and(|l| l.container_id == container_id) {
                    lease::remove(&held.path)?;
                    changed = true;
                }
            }
        }
        if changed {
            self.rebuild()?;
        }
        Ok(())
    }

    /// Removes the leases of dead owners and, if any went, rebuilds the
    /// table without their ports. Returns what went.
    pub fn sweep(&self) -> Result<Sweep, NetworkError> {
        let _lock = self.lock()?;
        let swept = sweep::dead_leases(&self.store)?;
        if !swept.removed.is_empty() {
            self.rebuild()?;
        }
        Ok(swept)
    }

    /// Brings the network's bridge up, puts the TAP on it and rebuilds the
    /// table (the new lease already written). The caller holds the lock.
    fn join(&self, def: &NetworkDef, tap: &str) -> Result<(), NetworkError> {
        let mut nl = Netlink::open()?;
        let bridge = bridge::ensure(&mut nl, def)?;
        let tap = bridge::attach(&mut nl, tap, bridge)?;
        if let Err(e) = self.rebuild() {
            // The transaction is all or nothing: only the TAP is to undo.
            let _ = bridge::detach(&mut nl, tap);
            return Err(e);
        }
        Ok(())
    }

    /// Every live lease of every network. The caller holds the lock.
    fn live_leases(&self) -> Result<Vec<LiveLease>, NetworkError> {
        let mut live = Vec::new();
        for def in self.store.list()? {
            for held in lease::read_all(&self.store.leases_dir(&def.name))? {
                if let Some(l) = held.live() {
                    live.push(LiveLease {
                        network: def.name.clone(),
                        address: held.address,
                        lease: l.clone(),
                    });
                }
            }
        }
        Ok(live)
    }

    /// Rebuilds our nftables table from the live leases. The caller holds
    /// the lock.
    fn rebuild(&self) -> Result<(), NetworkError> {
        let live = self.live_leases()?;
        let mut nets = Vec::new();
        for def in self.store.list()? {
            let on_it = || live.iter().filter(|l| l.network == def.name);
            let endpoints: Vec<(Ipv4Addr, Vec<PortMapping>)> = on_it()
                .map(|l| (l.address, l.lease.ports.clone()))
                .collect();
            let guards = on_it()
                .filter_map(|l| {
                    Some(nft::Guard {
                        port: l.lease.tap.clone()?,
                        mac: l.lease.mac,
                        address: l.address,
                    })
                })
                .collect();
            // A network nobody is on needs no rules; with nobody anywhere
            // the table goes entirely.
            if !endpoints.is_empty() {
                nets.push(nft::NetRules {
                    bridge: def.bridge,
                    subnet: def.subnet,
                    endpoints,
                    guards,
                });
            }
        }
        nft::apply(&nft::ruleset(&nets))
    }
}

/// The destinations the calling thread's netns routes (the default
/// route aside).
fn host_routes() -> Result<Vec<Ipv4Cidr>, NetworkError> {
    Ok(Netlink::open()?
        .routes()?
        .into_iter()
        .filter_map(|r| r.dst)
        .filter(|d| d.prefix > 0)
        .collect())
}

fn endpoint(def: &NetworkDef, address: Ipv4Addr, lease: &Lease, others: &[LiveLease]) -> Endpoint {
    Endpoint {
        network: def.clone(),
        container_id: lease.container_id.clone(),
        name: lease.name.clone(),
        address: Ipv4Cidr {
            addr: address,
            prefix: def.subnet.prefix,
        },
        gateway: def.gateway,
        mac: lease.mac,
        ports: lease.ports.clone(),
        peers: others
            .iter()
            .filter(|o| o.network == def.name && o.lease.container_id != lease.container_id)
            .filter_map(|o| Some((o.lease.name.clone()?, o.address)))
            .collect(),
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every build, for names
/// and MACs that must not change between versions.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
