//! Joining a VM to a network an engine (podman, docker, containerd) made:
//! the engine puts a veth end (eth0) with the container's address and
//! routes in a netns it made for the container, and the VM's TAP joins it
//! there with a tc redirect each way (Kata's tcfilter mode). The guest
//! then takes the veth's MAC, addresses and routes as its own, so to the
//! engine's network the VM is the container it configured.

use std::os::fd::BorrowedFd;

use bulkhead_netlink::{in_netns, Ipv4Cidr, Link, Netlink, Route};

use crate::NetworkError;

/// What the guest's interface should be: the engine's interface as found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLink {
    /// The engine interface's name ("eth0"), for messages.
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<Ipv4Cidr>,
    /// The main table's routes through that interface (`oif` is its index
    /// in the engine's netns: the guest puts its own link there).
    pub routes: Vec<Route>,
}

/// In the engine's netns `netns`: finds the engine's interface (the one
/// link besides lo and `tap` with an IPv4 address; eth0 if several), reads
/// its MAC, MTU, addresses and routes, brings the TAP `tap` (already made
/// there by the caller) up with the same MTU, and redirects both ways.
/// The calling thread is back in its own netns on return.
pub fn plumb(netns: BorrowedFd<'_>, tap: &str) -> Result<GuestLink, NetworkError> {
    in_netns(netns, || plumb_here(tap))?
}

fn plumb_here(tap: &str) -> Result<GuestLink, NetworkError> {
    let mut nl = Netlink::open()?;
    let links = nl.links()?;
    let tap_link = links
        .iter()
        .find(|l| l.name == tap)
        .ok_or_else(|| NetworkError::NoTap {
            name: tap.to_owned(),
            place: "the engine's network namespace",
        })?;
    let mut candidates: Vec<(&Link, Vec<Ipv4Cidr>)> = Vec::new();
    for link in links.iter().filter(|l| l.name != "lo" && l.name != tap) {
        let addresses = nl.addresses(link.index)?;
        if !addresses.is_empty() {
            candidates.push((link, addresses));
        }
    }
    if candidates.is_empty() {
        return Err(NetworkError::NoEngineLink {
            tap: tap.to_owned(),
        });
    }
    // Engines name the container's interface eth0; prefer it should an
    // engine (or a CNI plugin) have left another addressed link.
    let pick = candidates
        .iter()
        .position(|(l, _)| l.name == "eth0")
        .unwrap_or(0);
    let (link, addresses) = candidates.swap_remove(pick);
    let mac = link
        .mac
        .ok_or_else(|| NetworkError::NoMac(link.name.clone()))?;
    let routes: Vec<Route> = nl
        .routes()?
        .into_iter()
        .filter(|r| r.oif == Some(link.index))
        .collect();
    if tap_link.mtu != link.mtu {
        nl.set_mtu(tap_link.index, link.mtu)?;
    }
    nl.set_up(tap_link.index, true)?;
    if !link.up {
        nl.set_up(link.index, true)?;
    }
    nl.redirect_both_ways(link.index, tap_link.index)?;
    Ok(GuestLink {
        name: link.name.clone(),
        mac,
        mtu: link.mtu,
        addresses,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::*;
    use crate::testutil::{fresh_netns, in_fresh_netns, inside, tap};

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    /// Waits for a frame on the TAP that is an ARP request for `target`.
    fn arp_request_for(tap: &mut std::fs::File, target: Ipv4Addr) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(200u16)).unwrap_or(0) == 0 {
                continue;
            }
            let n = tap.read(&mut buf).unwrap();
            // Ethernet: ethertype at 12; ARP: opcode at 20, target IP at 38.
            if n >= 42
                && buf[12..14] == [0x08, 0x06]
                && buf[20..22] == [0, 1]
                && buf[38..42] == target.octets()
            {
                return true;
            }
        }
        false
    }

    #[test]
    fn plumb_joins_the_tap_to_the_engine_link() {
        in_fresh_netns(|| {
            // The engine's netns: eth0, one end of a veth whose other end is
            // in `peer` (where an engine's bridge would be), and our TAP.
            let engine = fresh_netns();
            let peer = fresh_netns();
            let mut tap_file = inside(&engine, || {
                let mut nl = Netlink::open().unwrap();
                nl.add_veth_pair("eth0", "peer0").unwrap();
                let peer0 = nl.link_index("peer0").unwrap();
                nl.set_netns(peer0, peer.as_fd()).unwrap();
                let eth0 = nl.link_index("eth0").unwrap();
                nl.set_mtu(eth0, 1400).unwrap();
                nl.add_address(eth0, cidr("10.88.0.5/16")).unwrap();
                nl.set_up(eth0, true).unwrap();
                nl.add_route(Route {
                    dst: None,
                    gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
                    oif: Some(eth0),
                })
                .unwrap();
                tap("tap0")
            });
            inside(&peer, || {
                let mut nl = Netlink::open().unwrap();
                let peer0 = nl.link_index("peer0").unwrap();
                nl.add_address(peer0, cidr("10.88.0.1/16")).unwrap();
                nl.set_up(peer0, true).unwrap();
            });

            let home = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
            let link = plumb(engine.as_fd(), "tap0").unwrap();
            let back = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(home.ino(), back.ino(), "the thread is home again");
            let (eth0, tap0) = inside(&engine, || {
                let mut nl = Netlink::open().unwrap();
                let eth0 = nl.link_by_name("eth0").unwrap().unwrap();
                let tap0 = nl.link_by_name("tap0").unwrap().unwrap();
                assert_eq!(nl.redirects(eth0.index).unwrap(), vec![tap0.index]);
                assert_eq!(nl.redirects(tap0.index).unwrap(), vec![eth0.index]);
                (eth0, tap0)
            });
            assert_eq!(link.name, "eth0");
            assert_eq!(Some(link.mac), eth0.mac);
            assert_eq!(link.mtu, 1400);
            assert_eq!(link.addresses, vec![cidr("10.88.0.5/16")]);
            assert!(
                link.routes.contains(&Route {
                    dst: None,
                    gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
                    oif: Some(eth0.index),
                }),
                "{:?}",
                link.routes
            );
            assert!(
                link.routes
                    .iter()
                    .any(|r| r.dst == Some(cidr("10.88.0.0/16")) && r.gateway.is_none()),
                "{:?}",
                link.routes
            );
            assert_eq!(tap0.mtu, 1400);
            assert!(tap0.up);
            // Twice is fine (a restore plumbs a fresh TAP into the same netns).
            plumb(engine.as_fd(), "tap0").unwrap();

            // Traffic for the container arriving on eth0 comes out the TAP.
            inside(&peer, || {
                let s = UdpSocket::bind("10.88.0.1:0").unwrap();
                let _ = s.send_to(b"x", "10.88.0.5:9");
            });
            assert!(arp_request_for(&mut tap_file, Ipv4Addr::new(10, 88, 0, 5)));
        });
    }

    #[test]
    fn plumb_needs_an_addressed_link_and_the_tap() {
        in_fresh_netns(|| {
            let engine = fresh_netns();
            let _tap = inside(&engine, || tap("tap0"));
            let err = plumb(engine.as_fd(), "tap0").unwrap_err();
            assert!(matches!(err, NetworkError::NoEngineLink { .. }), "{err}");
            let err = plumb(engine.as_fd(), "tap1").unwrap_err();
            assert_eq!(
                err.to_string(),
                "no TAP named \"tap1\" in the engine's network namespace"
            );
        });
    }
}
