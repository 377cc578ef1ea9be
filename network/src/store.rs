//! Network definitions on disk: `<root>/networks/<name>/network.json`,
//! written whole through a staging file and a rename so a reader never sees
//! half of one; the network's leases live beside it in `leases/`.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::{self, Ipv4Cidr};
use crate::error::{io, NetworkError};

/// The network every container joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "bridge";
pub const DEFAULT_BRIDGE: &str = "bulkhead0";
pub const DEFAULT_SUBNET: Ipv4Cidr = Ipv4Cidr {
    addr: Ipv4Addr::new(10, 89, 0, 0),
    prefix: 24,
};
const DEFINITION: &str = "network.json";
pub(crate) const LEASES: &str = "leases";
pub(crate) const LOCK: &str = "lock";
/// Docker's reserved names, and the lock file's (it shares the directory).
const RESERVED: &[&str] = &["host", "none", "default", LOCK];
const MAX_NAME: usize = 64;
/// Linux's IFNAMSIZ less the NUL.
const MAX_IFNAME: usize = 15;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkDef {
    pub name: String,
    /// The Linux bridge its containers' TAPs join.
    pub bridge: String,
    #[serde(with = "cidr::serde_str")]
    pub subnet: Ipv4Cidr,
    /// The bridge's own address: the containers' default route.
    pub gateway: Ipv4Addr,
    /// RFC 3339, UTC.
    pub created: String,
}

impl NetworkDef {
    /// The predefined network, as `open` writes it.
    pub(crate) fn predefined() -> NetworkDef {
        NetworkDef {
            name: DEFAULT_NETWORK.to_owned(),
            bridge: DEFAULT_BRIDGE.to_owned(),
            subnet: DEFAULT_SUBNET,
            gateway: first_host(DEFAULT_SUBNET),
            created: rfc3339_now(),
        }
    }

    /// A user network: its bridge named after it, gateway the first host.
    pub(crate) fn new(name: &str, subnet: Ipv4Cidr) -> NetworkDef {
        NetworkDef {
            name: name.to_owned(),
            bridge: bridge_name(name),
            subnet,
            gateway: first_host(subnet),
            created: rfc3339_now(),
        }
    }
}

fn first_host(subnet: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr::network(subnet)) + 1)
}

/// Docker's rule for network names, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, capped
/// so a name always makes a sane path.
pub(crate) fn check_name(name: &str) -> Result<(), NetworkError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !first_ok || !rest_ok || name.len() > MAX_NAME {
        return Err(NetworkError::BadName(name.to_owned()));
    }
    if RESERVED.contains(&name) {
        return Err(NetworkError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// `bh-` and the name when that fits an interface name (15 bytes); longer
/// names keep their first four characters and add eight hex digits of a
/// hash of the whole name, so two long names sharing a start still differ.
/// Every character Docker's name rule allows is fine in an interface name.
pub(crate) fn bridge_name(name: &str) -> String {
    const PREFIX: &str = "bh-";
    if PREFIX.len() + name.len() <= MAX_IFNAME {
        return format!("{PREFIX}{name}");
    }
    let head: String = name.chars().take(4).collect();
    let hash = crate::fnv1a(name.as_bytes());
    format!("{PREFIX}{head}{:08x}", hash as u32)
}

/// A subnet `create` can use: IPv4, host bits clear, and room for the
/// gateway and at least one container besides network and broadcast.
pub(crate) fn check_subnet(subnet: Ipv4Cidr) -> Result<(), NetworkError> {
    let bad = |why: String| NetworkError::BadSubnet {
        subnet: subnet.to_string(),
        why,
    };
    if subnet.prefix > 30 {
        return Err(bad(
            "a prefix longer than /30 leaves no container address".into()
        ));
    }
    if subnet.prefix < 8 {
        return Err(bad("a prefix shorter than /8 is too large".into()));
    }
    let network = cidr::network(subnet);
    if network != subnet.addr {
        return Err(bad(format!(
            "host bits are set: use {network}/{}",
            subnet.prefix
        )));
    }
    let first = subnet.addr.octets()[0];
    if subnet.addr.is_loopback() || subnet.addr.is_multicast() || first == 0 || first >= 224 {
        return Err(bad("not a unicast range".into()));
    }
    Ok(())
}

/// The first 10.89.N.0/24 (N = 1..255) that overlaps no existing network
/// and none of `routes` (the host's: a subnet already routed elsewhere
/// would make containers unable to reach it).
pub(crate) fn free_subnet(
    existing: &[NetworkDef],
    routes: &[Ipv4Cidr],
) -> Result<Ipv4Cidr, NetworkError> {
    (1..=255u8)
        .map(|n| Ipv4Cidr {
            addr: Ipv4Addr::new(10, 89, n, 0),
            prefix: 24,
        })
        .find(|s| {
            !existing.iter().any(|d| cidr::overlaps(d.subnet, *s))
                && !routes.iter().any(|r| cidr::overlaps(*r, *s))
        })
        .ok_or(NetworkError::NoFreeSubnet)
}

/// The definitions under `<root>/networks`.
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    pub(crate) fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn network_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn leases_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(LEASES)
    }

    /// None when no such network is defined.
    pub(crate) fn read(&self, name: &str) -> Result<Option<NetworkDef>, NetworkError> {
        // The name is checked first: it is about to become a path.
        if check_name(name).is_err() {
            return Ok(None);
        }
        let path = self.network_dir(name).join(DEFINITION);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| NetworkError::Corrupt { path, source })
    }

    pub(crate) fn get(&self, name: &str) -> Result<NetworkDef, NetworkError> {
        self.read(name)?
            .ok_or_else(|| NetworkError::Unknown(name.to_owned()))
    }

    /// Every definition, by name. A directory without its `network.json`
    /// (a `create` that died half way) is not a network.
    pub(crate) fn list(&self) -> Result<Vec<NetworkDef>, NetworkError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io("cannot list", &self.dir))?;
        let mut defs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("cannot list", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !entry.path().is_dir() {
                continue;
            }
            if let Some(def) = self.read(&name)? {
                defs.push(def);
            }
        }
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(defs)
    }

    /// Writes `def` whole (staging file + rename), with its leases directory.
    pub(crate) fn write(&self, def: &NetworkDef) -> Result<(), NetworkError> {
        let leases = self.leases_dir(&def.name);
        std::fs::create_dir_all(&leases).map_err(io("cannot create", &leases))?;
        let path = self.network_dir(&def.name).join(DEFINITION);
        let bytes = serde_json::to_vec_pretty(def).unwrap_or_default();
        write_atomically(&path, &bytes)
    }

    /// Removes the network's definition and directory (its leases with it).
    pub(crate) fn remove(&self, name: &str) -> Result<(), NetworkError> {
        let dir = self.network_dir(name);
        // The definition goes first: a removal that dies half way leaves
        // a directory `list` ignores, not a network without its leases.
        let def = dir.join(DEFINITION);
        match std::fs::remove_file(&def) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &def)(e)),
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", &dir)(e)),
        }
    }
}

/// Writes `bytes` to `path` through a staging file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), NetworkError> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".bulkhead-new");
    let staging = PathBuf::from(staging);
    std::fs::write(&staging, bytes).map_err(io("cannot write", &staging))?;
    std::fs::rename(&staging, path).map_err(io("cannot write", path))
}

fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// The CLI's format for times in records (`2024-05-01T12:00:00.000000000Z`).
fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker() {
        for ok in ["a", "web", "my_net.1-x", "0abc", &"x".repeat(64)] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "-x",
            ".x",
            "_x",
            "a/b",
            "a b",
            "../x",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(check_name(bad), Err(NetworkError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(check_name("lock"), Err(NetworkError::Reserved(_))));
        assert!(matches!(check_name("host"), Err(NetworkError::Reserved(_))));
    }

    #[test]
    fn bridge_names_fit_and_differ() {
        assert_eq!(bridge_name("web"), "bh-web");
        assert_eq!(bridge_name("twelve-chars"), "bh-twelve-chars");
        let a = bridge_name("a-rather-long-network-name");
        let b = bridge_name("a-rather-long-network-name-2");
        assert_eq!(a.len(), 15, "{a}");
        assert!(a.starts_with("bh-a-ra"), "{a}");
        assert_ne!(a, b);
        // Stable: the same name always makes the same bridge.
        assert_eq!(a, bridge_name("a-rather-long-network-name"));
        assert_eq!(bridge_name(&"x".repeat(64)).len(), 15);
    }

    #[test]
    fn subnets_are_checked() {
        for ok in ["10.1.0.0/16", "192.168.5.0/24", "10.89.7.0/30"] {
            check_subnet(ok.parse().unwrap()).unwrap();
        }
        for (bad, why) in [
            ("10.1.2.3/24", "use 10.1.2.0/24"),
            ("10.1.2.0/31", "/30"),
            ("10.0.0.0/7", "/8"),
            ("127.0.0.0/8", "unicast"),
            ("224.0.0.0/24", "unicast"),
        ] {
            let err = check_subnet(bad.parse().unwrap()).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn free_subnets_skip_taken_ones() {
        let taken = |s: &str| NetworkDef::new("x", s.parse().unwrap());
        let defs = vec![
            NetworkDef::predefined(),
            taken("10.89.1.0/24"),
            taken("10.89.3.0/24"),
        ];
        assert_eq!(free_subnet(&defs, &[]).unwrap().to_string(), "10.89.2.0/24");
        let routed = ["10.89.2.0/23".parse().unwrap()];
        assert_eq!(
            free_subnet(&defs, &routed).unwrap().to_string(),
            "10.89.4.0/24"
        );
        let all = vec![taken("10.89.0.0/16")];
        assert!(matches!(
            free_subnet(&all, &[]),
            Err(NetworkError::NoFreeSubnet)
        ));
    }

    #[test]
    fn definitions_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().to_path_buf());
        let def = NetworkDef::new("web", "10.89.4.0/24".parse().unwrap());
        assert_eq!(def.gateway, Ipv4Addr::new(10, 89, 4, 1));
        store.write(&def).unwrap();
        assert_eq!(store.get("web").unwrap(), def);
        let text = std::fs::read_to_string(tmp.path().join("web/network.json")).unwrap();
        assert!(text.contains(r#""subnet": "10.89.4.0/24""#), "{text}");
        // A half-made network (no definition) is not listed.
        std::fs::create_dir_all(tmp.path().join("half/leases")).unwrap();
        assert_eq!(store.list().unwrap(), vec![def]);
        assert!(matches!(store.get("half"), Err(NetworkError::Unknown(_))));
        assert!(matches!(store.get("../etc"), Err(NetworkError::Unknown(_))));
        store.remove("web").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_827_696, 5), "2000-02-29T12:34:56.000000005Z");
    }
}
