//! The one error type of this crate: every message is one line and names
//! the thing it is about (the network, the port, the file, the tool).

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("network {0:?} not found")]
    Unknown(String),
    #[error("network {0:?} already exists")]
    Exists(String),
    #[error(
        "invalid network name {0:?}: use letters, digits and _ . - (at most 64, starting with a letter or digit)"
    )]
    BadName(String),
    #[error("network name {0:?} is reserved")]
    Reserved(String),
    #[error("network {0:?} is predefined and cannot be removed")]
    Predefined(String),
    #[error("network {network:?} has active endpoints: {containers}")]
    InUse { network: String, containers: String },
    #[error("invalid subnet {subnet}: {why}")]
    BadSubnet { subnet: String, why: String },
    #[error("subnet {subnet} overlaps network {other:?} ({other_subnet})")]
    SubnetOverlap {
        subnet: String,
        other: String,
        other_subnet: String,
    },
    #[error("no free subnet left among 10.89.1.0/24 to 10.89.255.0/24: give one with --subnet")]
    NoFreeSubnet,
    #[error("bridge name {bridge} of network {network:?} is already used by network {other:?}")]
    BridgeTaken {
        network: String,
        bridge: String,
        other: String,
    },
    #[error("network {network:?} has no free address left in {subnet}")]
    SubnetExhausted { network: String, subnet: String },
    #[error("invalid port spec {spec:?}: {why}")]
    BadPort { spec: String, why: &'static str },
    /// `port` reads like "8080/tcp" or "127.0.0.1:8080/tcp".
    #[error("port {port} is already in use{}", by.as_ref().map(|c| format!(" by container {c}")).unwrap_or_default())]
    PortInUse { port: String, by: Option<String> },
    #[error("cannot publish port {port}: {source}")]
    Bind {
        port: String,
        source: std::io::Error,
    },
    #[error("container {container} is already connected to network {network:?}")]
    AlreadyConnected { container: String, network: String },
    #[error("owner process {0} of the endpoint is not running")]
    OwnerGone(u32),
    #[error("nft not found: install nftables")]
    NftMissing,
    #[error("nft failed: {0}")]
    Nft(String),
    /// The netlink crate's messages name the operation and the link.
    #[error(transparent)]
    Netlink(#[from] bulkhead_netlink::NetlinkError),
    #[error("cannot set {path} to {value}: {source}")]
    Sysctl {
        path: String,
        value: &'static str,
        source: std::io::Error,
    },
    /// `place`: "the caller's network namespace", "the engine's network namespace".
    #[error("no TAP named {name:?} in {place}")]
    NoTap { name: String, place: &'static str },
    #[error(
        "no interface with an IPv4 address besides lo and {tap} in the engine's network namespace"
    )]
    NoEngineLink { tap: String },
    #[error("interface {0} in the engine's network namespace has no MAC address")]
    NoMac(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt network state {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// `map_err(io("cannot read", &path))`.
pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}
