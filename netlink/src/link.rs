//! Links: list, create (bridge, veth), delete, and set attributes.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Netlink, NetlinkError};

/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
const IFNAME_MAX: usize = 15;

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `None` for links without a 6-byte hardware address (lo has all zeros, so `Some`).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The bridge (or other controller) this link is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND`: "bridge", "veth", "tun", ...; `None` for physical
    /// devices and lo.
    pub kind: Option<String>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::Controller(m) if m != 0 => link.master = Some(m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn message(index: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg
}

pub(crate) fn mac_str(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl Netlink {
    /// Every link in this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let replies = self
            .sock
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(|e| e.context("list links"))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        if name.is_empty() || name.len() > IFNAME_MAX {
            return Ok(None);
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || format!("look up link {name}"))
    }

    /// The link with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NetlinkError> {
        if index == 0 {
            return Ok(None);
        }
        self.get_link(message(index), || format!("look up link #{index}"))
    }

    /// The index of the link called `name`; [`NetlinkError::NoSuchLink`] if none.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        match self.link_by_name(name)? {
            Some(link) => Ok(link.index),
            None => Err(NetlinkError::NoSuchLink {
                name: name.to_string(),
            }),
        }
    }

    fn get_link(
        &mut self,
        msg: LinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Option<Link>, NetlinkError> {
        match self.sock.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e.context(op())),
        }
    }

    /// The name of link `index` for an error message: its name, or "link #N".
    pub(crate) fn describe(&mut self, index: u32) -> String {
        match self.link_by_index(index) {
            Ok(Some(link)) => link.name,
            _ => format!("link #{index}"),
        }
    }

    /// Creates bridge `name`; succeeds if a bridge of that name exists already.
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        let op = || format!("create bridge {name}");
        match self
            .sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => match self.link_by_name(name)? {
                Some(l) if l.kind.as_deref() == Some("bridge") => Ok(()),
                Some(l) => Err(NetlinkError::WrongKind {
                    op: op(),
                    name: name.to_string(),
                    kind: l.kind.unwrap_or_else(|| "physical".into()),
                }),
                None => Err(e.context(op())),
            },
            Err(e) => Err(e.context(op())),
        }
    }

    /// Creates a veth pair `a` <-> `b` (both down, in this namespace).
    pub fn add_veth_pair(&mut self, a: &str, b: &str) -> Result<(), NetlinkError> {
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(b.to_string()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(a.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.sock
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
            .map_err(|e| e.context(format!("create veth pair {a} and {b}")))
    }

    /// Deletes link `index`; succeeds if it is gone already.
    pub fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        match self
            .sock
            .request(RouteNetlinkMessage::DelLink(message(index)), 0)
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            Err(e) => {
                let name = self.describe(index);
                Err(e.context(format!("delete {name}")))
            }
        }
    }

    fn set(
        &mut self,
        msg: LinkMessage,
        op: impl FnOnce(&str) -> String,
    ) -> Result<(), NetlinkError> {
        let index = msg.header.index;
        match self.sock.request(RouteNetlinkMessage::SetLink(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) => {
                let name = self.describe(index);
                Err(e.context(op(&name)))
            }
        }
    }

    /// Sets link `index` administratively up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.header.change_mask = LinkFlags::Up;
        if up {
            msg.header.flags = LinkFlags::Up;
        }
        let state = if up { "up" } else { "down" };
        self.set(msg, |name| format!("set {name} {state}"))
    }

    /// Sets the hardware address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set(msg, |name| {
            format!("set the MAC of {name} to {}", mac_str(mac))
        })
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set(msg, |name| format!("set the MTU of {name} to {mtu}"))
    }

    /// Renames link `index` (the kernel wants it down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set(msg, |old| format!("rename {old} to {name}"))
    }

    /// Enslaves link `index` to bridge `master`, or frees it with `None`.
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes
            .push(LinkAttribute::Controller(master.unwrap_or(0)));
        match self.sock.request(RouteNetlinkMessage::SetLink(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) => {
                let name = self.describe(index);
                let op = match master {
                    Some(m) => format!("attach {name} to {}", self.describe(m)),
                    None => format!("detach {name} from its bridge"),
                };
                Err(e.context(op))
            }
        }
    }

    /// Turns hairpin mode on or off for bridge port `index`: the bridge may
    /// then send a frame back out the port it came in on, which a
    /// container reaching its own published port through the host needs
    /// when the host's bridge traffic goes through netfilter.
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.set(msg, |name| {
            format!(
                "turn hairpin mode {} on bridge port {name}",
                if on { "on" } else { "off" }
            )
        })
    }

    /// Moves link `index` into the network namespace `netns` (an open
    /// /proc/PID/ns/net or /run/netns/NAME). It leaves this namespace: its
    /// index there may differ.
    pub fn set_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        let mut msg = message(index);
        msg.attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.set(msg, |name| {
            format!("move {name} to another network namespace")
        })
    }
}
