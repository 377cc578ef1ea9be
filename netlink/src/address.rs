//! IPv4 addresses on links.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Ipv4Cidr, Netlink, NetlinkError};

fn message(index: u32, cidr: Ipv4Cidr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = cidr.prefix;
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(cidr.addr)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(cidr.addr)));
    if cidr.prefix < 31 {
        msg.attributes
            .push(AddressAttribute::Broadcast(cidr.broadcast()));
    }
    msg
}

impl Netlink {
    /// Adds `cidr` (e.g. 10.89.0.1/24: the address and its subnet's prefix
    /// route) to link `index`; succeeds if it is there already.
    pub fn add_address(&mut self, index: u32, cidr: Ipv4Cidr) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::NewAddress(message(index, cidr));
        match self.sock.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let name = self.describe(index);
                Err(e.context(format!("add {cidr} to {name}")))
            }
        }
    }

    /// Removes `cidr` from link `index`; succeeds if it is not there.
    pub fn delete_address(&mut self, index: u32, cidr: Ipv4Cidr) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::DelAddress(message(index, cidr));
        match self.sock.request(msg, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => {
                let name = self.describe(index);
                Err(e.context(format!("remove {cidr} from {name}")))
            }
        }
    }

    /// The IPv4 addresses of link `index`, primary first.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Ipv4Cidr>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        req.header.index = index;
        let replies = match self.sock.dump(RouteNetlinkMessage::GetAddress(req)) {
            Ok(r) => r,
            Err(e) => {
                let name = self.describe(index);
                return Err(e.context(format!("list the addresses of {name}")));
            }
        };
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.index == index && a.header.family == AddressFamily::Inet =>
                {
                    let mut local = None;
                    let mut address = None;
                    for attr in &a.attributes {
                        match attr {
                            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                            _ => {}
                        }
                    }
                    local.or(address).map(|addr| Ipv4Cidr {
                        addr,
                        prefix: a.header.prefix_len,
                    })
                }
                _ => None,
            })
            .collect())
    }
}
