//! IPv4 address with prefix length.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::NetlinkError;

/// An IPv4 address and prefix length, `a.b.c.d/p`. The address need not be the
/// network's first: `10.89.0.1/24` is an interface address on `10.89.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// `None` when `prefix` is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        (prefix <= 32).then_some(Ipv4Cidr { addr, prefix })
    }

    /// The netmask, `255.255.255.0` for /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// The network this address is on, host bits zero: 10.89.0.0/24 for 10.89.0.1/24.
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & mask(self.prefix)),
            prefix: self.prefix.min(32),
        }
    }

    /// The network's broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.prefix))
    }

    /// Whether `ip` is on this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr) & mask(self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetlinkError;

    /// `a.b.c.d/p`; a bare `a.b.c.d` is /32.
    fn from_str(s: &str) -> Result<Ipv4Cidr, NetlinkError> {
        let bad = |reason| NetlinkError::InvalidCidr {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix = match prefix {
            None => 32,
            Some(p) if !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad("bad prefix length"))?
            }
            Some(_) => return Err(bad("bad prefix length")),
        };
        if prefix > 32 {
            return Err(bad("prefix length over 32"));
        }
        Ok(Ipv4Cidr { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let c: Ipv4Cidr = "10.89.0.1/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 89, 0, 1));
        assert_eq!(c.prefix, 24);
        assert_eq!(c.to_string(), "10.89.0.1/24");
        assert_eq!("1.2.3.4".parse::<Ipv4Cidr>().unwrap().prefix, 32);
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().prefix, 0);
        for bad in [
            "",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0/8",
            "10.0.0.1/+8",
            "x/8",
            "10.0.0.1/008",
            "::1/64",
        ] {
            let e = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn network_contains_broadcast() {
        let c: Ipv4Cidr = "10.89.0.77/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.89.0.0/24");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 89, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 89, 1, 1)));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(192, 168, 1, 1)));
        let host: Ipv4Cidr = "192.168.1.1/32".parse().unwrap();
        assert!(host.contains(Ipv4Addr::new(192, 168, 1, 1)));
        assert!(!host.contains(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(host.network(), host);
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 33), None);
    }
}
