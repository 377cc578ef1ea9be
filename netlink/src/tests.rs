//! Against the real kernel, each test in a fresh network namespace.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use crate::testns::{fresh_netns, in_fresh_netns, own_netns_inode};
use crate::{in_netns, Ipv4Cidr, Netlink, NetlinkError, Route};

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn link(nl: &mut Netlink, name: &str) -> crate::Link {
    nl.link_by_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("no link {name}"))
}

#[test]
fn links_bridge_and_veth() {
    in_fresh_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let links = nl.links().unwrap();
        assert_eq!(links.len(), 1, "{links:?}");
        assert_eq!(links[0].name, "lo");

        nl.add_bridge("bh-br0").unwrap();
        nl.add_bridge("bh-br0").unwrap(); // exists: fine
        let br = link(&mut nl, "bh-br0");
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert!(!br.up);
        assert_eq!(nl.link_by_index(br.index).unwrap(), Some(br.clone()));
        assert_eq!(nl.link_index("bh-br0").unwrap(), br.index);

        nl.add_veth_pair("bh-va", "bh-vb").unwrap();
        let va = link(&mut nl, "bh-va");
        let vb = link(&mut nl, "bh-vb");
        assert_eq!(va.kind.as_deref(), Some("veth"));
        assert_eq!(vb.kind.as_deref(), Some("veth"));
        assert_eq!(nl.links().unwrap().len(), 4);

        let mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        nl.set_mac(va.index, mac).unwrap();
        nl.set_mtu(va.index, 1400).unwrap();
        nl.set_master(va.index, Some(br.index)).unwrap();
        nl.set_up(va.index, true).unwrap();
        nl.set_up(br.index, true).unwrap();
        let got = link(&mut nl, "bh-va");
        assert_eq!(got.mac, Some(mac));
        assert_eq!(got.mtu, 1400);
        assert_eq!(got.master, Some(br.index));
        assert!(got.up);
        assert!(link(&mut nl, "bh-br0").up);

        nl.set_master(va.index, None).unwrap();
        nl.set_up(va.index, false).unwrap();
        let got = link(&mut nl, "bh-va");
        assert_eq!(got.master, None);
        assert!(!got.up);

        nl.set_name(vb.index, "bh-vc").unwrap();
        assert_eq!(nl.link_by_name("bh-vb").unwrap(), None);
        assert_eq!(link(&mut nl, "bh-vc").index, vb.index);

        // Deleting one end of a veth takes the other with it.
        nl.delete_link(va.index).unwrap();
        nl.delete_link(va.index).unwrap(); // gone: fine
        assert_eq!(nl.link_by_name("bh-va").unwrap(), None);
        assert_eq!(nl.link_by_name("bh-vc").unwrap(), None);
        nl.delete_link(br.index).unwrap();
        assert_eq!(nl.links().unwrap().len(), 1);
        assert_eq!(nl.link_by_name("a-name-longer-than-15").unwrap(), None);
    });
}

#[test]
fn addresses_and_routes() {
    in_fresh_netns(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_bridge("bh-br0").unwrap();
        let br = nl.link_index("bh-br0").unwrap();
        nl.set_up(br, true).unwrap();

        assert_eq!(nl.addresses(br).unwrap(), vec![]);
        nl.add_address(br, cidr("10.77.0.1/24")).unwrap();
        nl.add_address(br, cidr("10.77.0.1/24")).unwrap(); // exists: fine
        nl.add_address(br, cidr("10.78.0.5/16")).unwrap();
        assert_eq!(
            nl.addresses(br).unwrap(),
            vec![cidr("10.77.0.1/24"), cidr("10.78.0.5/16")]
        );
        // lo's 127.0.0.1 is not listed under the bridge, nor the other way.
        let lo = nl.link_index("lo").unwrap();
        assert!(nl
            .addresses(lo)
            .unwrap()
            .iter()
            .all(|c| c.addr.is_loopback()));

        let default = Route {
            dst: None,
            gateway: Some(Ipv4Addr::new(10, 77, 0, 254)),
            oif: Some(br),
        };
        nl.add_route(default).unwrap();
        nl.add_route(default).unwrap(); // exists: fine
        let onlink = Route {
            dst: Some(cidr("192.168.50.0/24")),
            gateway: None,
            oif: Some(br),
        };
        nl.add_route(onlink).unwrap();
        let routes = nl.routes().unwrap();
        assert!(routes.contains(&default), "{routes:?}");
        assert!(routes.contains(&onlink), "{routes:?}");
        // The kernel's prefix route for the address.
        let prefix = Route {
            dst: Some(cidr("10.77.0.0/24")),
            gateway: None,
            oif: Some(br),
        };
        assert!(routes.contains(&prefix), "{routes:?}");
        // Local and broadcast routes live in other tables or types.
        assert!(
            routes.iter().all(|r| r.dst.is_none_or(|d| d.prefix < 32)),
            "{routes:?}"
        );

        nl.delete_route(default).unwrap();
        nl.delete_route(default).unwrap(); // gone: fine
        nl.delete_route(onlink).unwrap();
        let routes = nl.routes().unwrap();
        assert!(
            !routes.contains(&default) && !routes.contains(&onlink),
            "{routes:?}"
        );

        nl.delete_address(br, cidr("10.77.0.1/24")).unwrap();
        nl.delete_address(br, cidr("10.77.0.1/24")).unwrap(); // gone: fine
        assert_eq!(nl.addresses(br).unwrap(), vec![cidr("10.78.0.5/16")]);
        assert!(!nl.routes().unwrap().contains(&prefix));
    });
}

#[test]
fn move_to_another_netns() {
    in_fresh_netns(|| {
        let other = fresh_netns();
        let mut nl = Netlink::open().unwrap();
        nl.add_veth_pair("bh-host", "bh-guest").unwrap();
        let guest = nl.link_index("bh-guest").unwrap();
        nl.set_netns(guest, other.as_fd()).unwrap();
        assert_eq!(nl.link_by_name("bh-guest").unwrap(), None);
        // The host end sees its peer leave; it stays here.
        assert!(nl.link_by_name("bh-host").unwrap().is_some());

        let home = own_netns_inode();
        let seen = in_netns(other.as_fd(), || {
            assert_ne!(own_netns_inode(), home);
            let mut there = Netlink::open().unwrap();
            let g = there.link_by_name("bh-guest").unwrap().expect("moved link");
            there.set_name(g.index, "eth0").unwrap();
            there.set_up(g.index, true).unwrap();
            there.add_address(g.index, cidr("172.30.0.2/24")).unwrap();
            there.addresses(g.index).unwrap()
        })
        .unwrap();
        assert_eq!(seen, vec![cidr("172.30.0.2/24")]);
        assert_eq!(own_netns_inode(), home, "in_netns returns the thread home");

        // A socket opened there keeps talking to that namespace.
        let mut there = in_netns(other.as_fd(), Netlink::open).unwrap().unwrap();
        let eth0 = there.link_by_name("eth0").unwrap().expect("eth0 there");
        assert!(eth0.up);
        assert_eq!(nl.link_by_name("eth0").unwrap(), None);
    });
}

#[test]
fn errors_name_the_operation_and_link() {
    in_fresh_netns(|| {
        let mut nl = Netlink::open().unwrap();
        let e = nl.set_up(9999, true).unwrap_err();
        assert!(
            matches!(
                e,
                NetlinkError::Kernel {
                    errno: libc::ENODEV,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.errno(), Some(libc::ENODEV));
        assert_eq!(e.to_string(), "cannot set link #9999 up: No such device");

        let e = nl.link_index("bh-nope").unwrap_err();
        assert!(
            matches!(&e, NetlinkError::NoSuchLink { name } if name == "bh-nope"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "no link named \"bh-nope\"");

        nl.add_veth_pair("bh-va", "bh-vb").unwrap();
        let va = nl.link_index("bh-va").unwrap();
        let e = nl.add_veth_pair("bh-va", "bh-vx").unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(
            e.to_string()
                .starts_with("cannot create veth pair bh-va and bh-vx: "),
            "{e}"
        );

        let e = nl.add_bridge("bh-va").unwrap_err();
        assert!(matches!(e, NetlinkError::WrongKind { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "cannot create bridge bh-va: bh-va exists and is a veth link"
        );

        let e = nl.set_master(va, Some(va)).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot attach bh-va to bh-va: "),
            "{e}"
        );

        let e = nl.add_address(9999, cidr("10.0.0.1/24")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot add 10.0.0.1/24 to link #9999: "),
            "{e}"
        );

        // No address on the link yet: the gateway is unreachable.
        let e = nl
            .add_route(Route {
                dst: None,
                gateway: Some(Ipv4Addr::new(10, 1, 2, 3)),
                oif: Some(va),
            })
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot add route default via 10.1.2.3 dev bh-va: "),
            "{e}"
        );
    });
}

#[test]
fn in_netns_reports_a_bad_fd() {
    let file = std::fs::File::open("/proc/self/cmdline").unwrap();
    let e = in_netns(file.as_fd(), || ()).unwrap_err();
    assert!(matches!(e, NetlinkError::EnterNetns(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("cannot enter network namespace: "),
        "{e}"
    );
}

/// A TAP (IFF_TAP | IFF_NO_PI) in this thread's namespace, made with TUNSETIFF.
fn open_tap(name: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    file
}

/// An AF_PACKET socket bound to link `index`, with a receive timeout.
fn packet_socket(index: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new socket nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    use std::os::fd::AsRawFd;
    // SAFETY: addr is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0);
    fd
}

/// A broadcast Ethernet frame of the local experimental ethertype.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Reads from `fd` until a frame containing `payload` arrives; false after ~2 s.
fn wait_for(fd: std::os::fd::BorrowedFd<'_>, payload: &[u8], tap: bool) -> bool {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        if tap {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
                continue;
            }
        }
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 14 && buf[12..14] == [0x88, 0xb5] && buf[14..14 + payload.len()] == *payload {
            return true;
        }
    }
    false
}

#[test]
fn redirect_both_ways_between_veth_and_tap() {
    use std::io::Write;
    in_fresh_netns(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth_pair("bh-eth0", "bh-peer").unwrap();
        let mut tap = open_tap("bh-tap0");
        let eth0 = nl.link_index("bh-eth0").unwrap();
        let peer = nl.link_index("bh-peer").unwrap();
        let tap_index = nl.link_index("bh-tap0").unwrap();
        assert_eq!(
            nl.link_by_index(tap_index)
                .unwrap()
                .unwrap()
                .kind
                .as_deref(),
            Some("tun")
        );
        for i in [eth0, peer, tap_index] {
            nl.set_up(i, true).unwrap();
        }
        assert_eq!(nl.redirects(eth0).unwrap(), vec![]);

        nl.redirect_both_ways(eth0, tap_index).unwrap();
        assert_eq!(nl.redirects(eth0).unwrap(), vec![tap_index]);
        assert_eq!(nl.redirects(tap_index).unwrap(), vec![eth0]);
        nl.redirect_both_ways(eth0, tap_index).unwrap(); // again: nothing doubled
        assert_eq!(nl.redirects(eth0).unwrap(), vec![tap_index]);
        assert_eq!(nl.redirects(tap_index).unwrap(), vec![eth0]);

        // In at eth0 (sent from its peer) -> out of the TAP (read from its fd).
        let at_peer = packet_socket(peer);
        let out = frame(b"bulkhead: eth0 to tap");
        // SAFETY: `out` is valid for its length; the socket is bound to `peer`.
        let n = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&at_peer),
                out.as_ptr().cast(),
                out.len(),
                0,
            )
        };
        assert_eq!(
            n,
            out.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            wait_for(tap.as_fd(), b"bulkhead: eth0 to tap", true),
            "frame did not reach the TAP"
        );

        // Written to the TAP -> out of eth0 (seen at its peer).
        tap.write_all(&frame(b"bulkhead: tap to eth0")).unwrap();
        assert!(
            wait_for(at_peer.as_fd(), b"bulkhead: tap to eth0", false),
            "frame did not reach eth0's peer"
        );
    });
}

#[test]
fn redirect_errors_name_the_links() {
    in_fresh_netns(|| {
        let mut nl = Netlink::open().unwrap();
        nl.add_veth_pair("bh-a", "bh-b").unwrap();
        let a = nl.link_index("bh-a").unwrap();
        let e = nl.redirect_both_ways(a, 9999).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot add an ingress qdisc to link #9999: "),
            "{e}"
        );
    });
}
