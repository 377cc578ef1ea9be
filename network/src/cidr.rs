//! IPv4 prefixes: the subnet arithmetic IPAM needs, and their JSON form
//! (the string "10.89.0.0/24", readable in the state files).

use std::net::Ipv4Addr;

pub use bulkhead_netlink::Ipv4Cidr;

/// Strictly "a.b.c.d/len", as the state files hold it (a bare address,
/// which the netlink crate reads as /32, is not a subnet here).
pub(crate) fn parse(s: &str) -> Option<Ipv4Cidr> {
    let (addr, prefix) = s.split_once('/')?;
    // u8's FromStr takes a leading '+'; a prefix is digits only.
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(Ipv4Cidr {
        addr: addr.parse().ok()?,
        prefix,
    })
}

/// The mask of a prefix length, as a host-order u32.
pub(crate) fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// The network address of `c` (host bits cleared).
pub(crate) fn network(c: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(c.addr) & mask(c.prefix))
}

/// The broadcast address of `c` (host bits set).
pub(crate) fn broadcast(c: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(c.addr) | !mask(c.prefix))
}

/// Whether two prefixes share an address (one then contains the other).
pub(crate) fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    let p = a.prefix.min(b.prefix);
    u32::from(a.addr) & mask(p) == u32::from(b.addr) & mask(p)
}

/// `#[serde(with = "crate::cidr::serde_str")]`: an `Ipv4Cidr` as "a.b.c.d/len".
pub(crate) mod serde_str {
    use super::Ipv4Cidr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Ipv4Cidr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Cidr, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid IPv4 prefix {text:?}: expected a.b.c.d/len"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        parse(s).unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(
            c("10.89.0.0/24"),
            Ipv4Cidr {
                addr: Ipv4Addr::new(10, 89, 0, 0),
                prefix: 24
            }
        );
        assert_eq!(c("10.89.0.2/24").to_string(), "10.89.0.2/24");
        for bad in [
            "10.89.0.0",
            "10.89.0.0/33",
            "10.89.0.0/+8",
            "10.89.0/24",
            "/24",
            "a/b",
            "",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn arithmetic() {
        let s = c("10.89.3.7/24");
        assert_eq!(network(s), Ipv4Addr::new(10, 89, 3, 0));
        assert_eq!(broadcast(s), Ipv4Addr::new(10, 89, 3, 255));
        assert!(overlaps(c("10.0.0.0/8"), c("10.89.0.0/24")));
        assert!(overlaps(c("10.89.0.0/24"), c("10.0.0.0/8")));
        assert!(!overlaps(c("10.89.0.0/24"), c("10.89.1.0/24")));
        assert_eq!(mask(0), 0);
        assert_eq!(mask(32), u32::MAX);
    }
}
