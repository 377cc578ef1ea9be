//! Published ports: Docker's `-p` syntax, and the checks that a host port
//! is free before a DNAT rule takes it over (a DNAT'd port silently hides
//! whatever else listens there, so a taken port must fail loudly instead).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NetworkError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `-p` mapping. `host_ip: None` is every host address (Docker's
/// 0.0.0.0, which parses to None too); `host_port: 0` asks `connect` to
/// pick a free one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// The host side, as errors name it: "8080/tcp", "127.0.0.1:8080/tcp".
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}:{}/{}", self.host_port, self.protocol),
            None => format!("{}/{}", self.host_port, self.protocol),
        }
    }

    /// Whether two mappings claim the same host port: same protocol and
    /// port, and an address in common (None is all of them).
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Back in `-p` syntax: "127.0.0.1:8080:80/tcp", "8080:80/udp".
impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// Docker's `-p`: `[HOSTIP:]HOSTPORT:CTRPORT[/PROTO]`, `[HOSTIP:]:CTRPORT`
/// and `CTRPORT` (a random host port), PROTO `tcp` (default) or `udp`.
impl FromStr for PortMapping {
    type Err = NetworkError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why| NetworkError::BadPort {
            spec: spec.to_owned(),
            why,
        };
        if spec.starts_with('[') {
            return Err(bad("IPv6 host addresses are not supported"));
        }
        let (rest, protocol) = match spec.rsplit_once('/') {
            None => (spec, Protocol::Tcp),
            Some((rest, p)) => match p.to_ascii_lowercase().as_str() {
                "tcp" => (rest, Protocol::Tcp),
                "udp" => (rest, Protocol::Udp),
                "sctp" => return Err(bad("sctp is not supported: use tcp or udp")),
                _ => return Err(bad("unknown protocol: use tcp or udp")),
            },
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (ip, host, container) = match parts[..] {
            [c] => ("", "", c),
            [h, c] => ("", h, c),
            [ip, h, c] => (ip, h, c),
            _ => return Err(bad("expected [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTOCOL]")),
        };
        if host.contains('-') || container.contains('-') {
            return Err(bad("port ranges are not supported"));
        }
        let host_ip = match ip {
            "" => None,
            ip => match ip.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_unspecified() => None,
                Ok(ip) => Some(ip),
                Err(_) => return Err(bad("the host address is not an IPv4 address")),
            },
        };
        let host_port = match host {
            "" => 0,
            h => port(h).ok_or_else(|| bad("the host port is not a number from 0 to 65535"))?,
        };
        let container_port = match port(container) {
            Some(0) | None => {
                return Err(bad("the container port is not a number from 1 to 65535"))
            }
            Some(p) => p,
        };
        Ok(PortMapping {
            host_ip,
            host_port,
            container_port,
            protocol,
        })
    }
}

/// Digits only: u16's FromStr would take "+80".
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Resolves and checks the host ports of `wanted` against `taken` (the
/// mappings of every other live lease, with the container holding each)
/// and against the host's own sockets, in the calling thread's netns.
/// Returns the mappings with every `host_port: 0` replaced by a free port.
pub(crate) fn resolve(
    wanted: &[PortMapping],
    taken: &[(String, PortMapping)],
) -> Result<Vec<PortMapping>, NetworkError> {
    // An ephemeral port the kernel hands out may still be one a lease
    // holds (its socket is gone once the DNAT rule is in): ask again.
    const ATTEMPTS: usize = 32;
    let mut out: Vec<Option<PortMapping>> = vec![None; wanted.len()];
    // Fixed ports first, so a random one cannot take a port asked for by
    // number later in the same request.
    for (i, m) in wanted.iter().enumerate().filter(|(_, m)| m.host_port != 0) {
        check_free(m, taken, &out)?;
        probe(m)?;
        out[i] = Some(m.clone());
    }
    for (i, m) in wanted.iter().enumerate().filter(|(_, m)| m.host_port == 0) {
        let mut found = None;
        for _ in 0..ATTEMPTS {
            let mut candidate = m.clone();
            candidate.host_port = ephemeral(m)?;
            if check_free(&candidate, taken, &out).is_ok() {
                found = Some(candidate);
                break;
            }
        }
        out[i] = Some(found.ok_or_else(|| NetworkError::PortInUse {
            port: m.host_side(),
            by: None,
        })?);
    }
    // Every slot is filled above; flatten keeps the caller's order.
    Ok(out.into_iter().flatten().collect())
}

fn check_free(
    m: &PortMapping,
    taken: &[(String, PortMapping)],
    ours: &[Option<PortMapping>],
) -> Result<(), NetworkError> {
    if let Some((container, _)) = taken.iter().find(|(_, t)| t.clashes_with(m)) {
        return Err(NetworkError::PortInUse {
            port: m.host_side(),
            by: Some(container.clone()),
        });
    }
    if ours.iter().flatten().any(|o| o.clashes_with(m)) {
        return Err(NetworkError::PortInUse {
            port: m.host_side(),
            by: None,
        });
    }
    Ok(())
}

fn bind_addr(m: &PortMapping, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port)
}

/// Binds the host port for a moment: a process already listening there
/// (or holding the UDP port) makes this fail.
fn probe(m: &PortMapping) -> Result<(), NetworkError> {
    let addr = bind_addr(m, m.host_port);
    let bound = match m.protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(drop),
        Protocol::Udp => UdpSocket::bind(addr).map(drop),
    };
    bound.map_err(|source| bind_error(m, source))
}

/// A port the kernel says is free now, for `m`'s address and protocol.
fn ephemeral(m: &PortMapping) -> Result<u16, NetworkError> {
    let addr = bind_addr(m, 0);
    let port = match m.protocol {
        Protocol::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Protocol::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    };
    port.map(|a| a.port())
        .map_err(|source| bind_error(m, source))
}

fn bind_error(m: &PortMapping, source: std::io::Error) -> NetworkError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        NetworkError::PortInUse {
            port: m.host_side(),
            by: None,
        }
    } else {
        NetworkError::Bind {
            port: m.host_side(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(spec: &str) -> PortMapping {
        spec.parse()
            .unwrap_or_else(|e| panic!("{spec:?} should parse: {e}"))
    }

    fn m(ip: Option<[u8; 4]>, host: u16, ctr: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            host_ip: ip.map(Ipv4Addr::from),
            host_port: host,
            container_port: ctr,
            protocol,
        }
    }

    #[test]
    fn docker_specs_parse() {
        use Protocol::*;
        assert_eq!(p("80"), m(None, 0, 80, Tcp));
        assert_eq!(p("8080:80"), m(None, 8080, 80, Tcp));
        assert_eq!(p("8080:80/udp"), m(None, 8080, 80, Udp));
        assert_eq!(p("8080:80/TCP"), m(None, 8080, 80, Tcp));
        assert_eq!(
            p("127.0.0.1:8080:80"),
            m(Some([127, 0, 0, 1]), 8080, 80, Tcp)
        );
        assert_eq!(p("127.0.0.1::80/udp"), m(Some([127, 0, 0, 1]), 0, 80, Udp));
        assert_eq!(p("0.0.0.0:8080:80"), m(None, 8080, 80, Tcp));
        assert_eq!(p(":80"), m(None, 0, 80, Tcp));
        assert_eq!(p("53/udp"), m(None, 0, 53, Udp));
        assert_eq!(p("65535:1"), m(None, 65535, 1, Tcp));
    }

    #[test]
    fn bad_specs_name_the_spec_and_why() {
        for (spec, why) in [
            ("", "container port"),
            ("8080:", "container port"),
            ("8080:0", "container port"),
            ("8080:70000", "container port"),
            ("70000:80", "host port"),
            ("+80:80", "host port"),
            ("http:80", "host port"),
            ("8080:80/sctp", "sctp"),
            ("8080:80/icmp", "protocol"),
            ("8000-8010:80", "ranges"),
            ("8080:80-81", "ranges"),
            ("1.2.3.4:5:6:7", "expected"),
            ("[::1]:8080:80", "IPv6"),
            ("localhost:8080:80", "IPv4"),
            ("1.2.3:8080:80", "IPv4"),
        ] {
            let err = spec.parse::<PortMapping>().unwrap_err().to_string();
            assert!(err.contains(&format!("{spec:?}")), "{spec}: {err}");
            assert!(err.contains(why), "{spec}: {err}");
        }
    }

    #[test]
    fn display_is_a_spec_again() {
        for spec in ["127.0.0.1:8080:80/tcp", "8080:80/udp"] {
            assert_eq!(p(spec).to_string(), spec);
        }
        assert_eq!(p("127.0.0.1:8080:80").host_side(), "127.0.0.1:8080/tcp");
        assert_eq!(p("8080:80").host_side(), "8080/tcp");
    }

    #[test]
    fn clashes() {
        assert!(p("8080:80").clashes_with(&p("127.0.0.1:8080:81")));
        assert!(p("1.2.3.4:8080:80").clashes_with(&p("1.2.3.4:8080:81")));
        assert!(!p("1.2.3.4:8080:80").clashes_with(&p("1.2.3.5:8080:80")));
        assert!(!p("8080:80").clashes_with(&p("8080:80/udp")));
        assert!(!p("8080:80").clashes_with(&p("8081:80")));
    }

    #[test]
    fn json_form() {
        let json = serde_json::to_string(&p("127.0.0.1:8080:80/udp")).unwrap();
        assert_eq!(
            json,
            r#"{"host_ip":"127.0.0.1","host_port":8080,"container_port":80,"protocol":"udp"}"#
        );
    }
}
