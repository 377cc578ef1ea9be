//! The container's network as the host plumbed it: one interface (the
//! guest's virtio-net `eth0`), its routes, and the name-service files the
//! container sees. The agent applies it before the container's process
//! exists; without it the container has only `lo` (`--network none`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An IPv4 address with its prefix length: `10.89.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// A route in the container's main table; `destination: None` is the
/// default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Ipv4Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
}

/// What the container's `/etc/hosts`, `/etc/resolv.conf` and
/// `/etc/hostname` say, written into its root (not under an engine, which
/// binds its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFiles {
    pub hosts: String,
    pub resolv_conf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The address the interface takes (the host picked it: on an
    /// engine's network it is the engine's veth's, so frames redirected
    /// between the two reach the guest).
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<Ipv4Prefix>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<NetworkFiles>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetworkSpecError {
    #[error("network: {0:02x?} is not a unicast MAC address")]
    BadMac([u8; 6]),
    #[error("network: MTU {0} is outside 68..=65535")]
    BadMtu(u32),
    #[error("network: prefix length /{0} is longer than 32")]
    BadPrefix(u8),
    #[error("network: a route needs a destination or a gateway")]
    EmptyRoute,
    #[error("network: {0} contains a NUL byte")]
    NulByte(&'static str),
}

impl NetworkSpec {
    pub fn validate(&self) -> Result<(), NetworkSpecError> {
        if self.mac[0] & 1 != 0 || self.mac == [0; 6] {
            return Err(NetworkSpecError::BadMac(self.mac));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(NetworkSpecError::BadMtu(self.mtu));
        }
        let prefixes = self
            .addresses
            .iter()
            .copied()
            .chain(self.routes.iter().filter_map(|r| r.destination));
        for p in prefixes {
            if p.prefix > 32 {
                return Err(NetworkSpecError::BadPrefix(p.prefix));
            }
        }
        if self
            .routes
            .iter()
            .any(|r| r.destination.is_none() && r.gateway.is_none())
        {
            return Err(NetworkSpecError::EmptyRoute);
        }
        if let Some(f) = &self.files {
            for (name, text) in [
                ("/etc/hosts", &f.hosts),
                ("/etc/resolv.conf", &f.resolv_conf),
            ] {
                if text.contains('\0') {
                    return Err(NetworkSpecError::NulByte(name));
                }
            }
            if f.hostname.as_deref().is_some_and(|h| h.contains('\0')) {
                return Err(NetworkSpecError::NulByte("/etc/hostname"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            mac: [0x02, 0x42, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![Ipv4Prefix {
                addr: Ipv4Addr::new(10, 89, 0, 2),
                prefix: 24,
            }],
            routes: vec![RouteSpec {
                destination: None,
                gateway: Some(Ipv4Addr::new(10, 89, 0, 1)),
            }],
            files: None,
        }
    }

    #[test]
    fn a_plain_spec_is_valid_and_round_trips() {
        let s = spec();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).unwrap(), s);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut s = spec();
        s.mac[0] = 1;
        assert!(matches!(s.validate(), Err(NetworkSpecError::BadMac(_))));
        let mut s = spec();
        s.mtu = 10;
        assert_eq!(s.validate(), Err(NetworkSpecError::BadMtu(10)));
        let mut s = spec();
        s.addresses[0].prefix = 33;
        assert_eq!(s.validate(), Err(NetworkSpecError::BadPrefix(33)));
        let mut s = spec();
        s.routes[0].gateway = None;
        assert_eq!(s.validate(), Err(NetworkSpecError::EmptyRoute));
        let mut s = spec();
        s.files = Some(NetworkFiles {
            hosts: "a\0".into(),
            resolv_conf: String::new(),
            hostname: None,
        });
        assert_eq!(s.validate(), Err(NetworkSpecError::NulByte("/etc/hosts")));
    }
}
