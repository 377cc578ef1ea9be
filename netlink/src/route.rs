//! IPv4 unicast routes in the main table.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Ipv4Cidr, Netlink, NetlinkError};

/// An IPv4 unicast route of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// `None`: the default route (0.0.0.0/0).
    pub dst: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    /// The output link.
    pub oif: Option<u32>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dst {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(o) = self.oif {
            write!(f, " dev #{o}")?;
        }
        Ok(())
    }
}

impl Route {
    fn message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        // As `ip route add`: a route without a gateway is on-link.
        msg.header.scope = if self.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some(dst) = self.dst.filter(|d| d.prefix > 0) {
            let net = dst.network();
            msg.header.destination_prefix_length = net.prefix;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(net.addr)));
        }
        if let Some(gw) = self.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Route> {
        if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast
        {
            return None;
        }
        let mut table = u32::from(msg.header.table);
        let mut dst = None;
        let mut route = Route {
            dst: None,
            gateway: None,
            oif: None,
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(*g),
                RouteAttribute::Oif(o) => route.oif = Some(*o),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let prefix = msg.header.destination_prefix_length;
        if prefix > 0 {
            route.dst = Some(Ipv4Cidr {
                addr: dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
                prefix,
            });
        }
        Some(route)
    }
}

impl Netlink {
    /// Adds `route` to the main table; succeeds if it is there already.
    pub fn add_route(&mut self, route: Route) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::NewRoute(route.message());
        match self.sock.request(msg, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e.context(format!("add route {}", self.route_text(&route)))),
        }
    }

    /// Deletes `route` from the main table; succeeds if it is not there.
    pub fn delete_route(&mut self, route: Route) -> Result<(), NetlinkError> {
        let mut msg = route.message();
        // Match any scope and protocol, as `ip route del` does.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        match self.sock.request(RouteNetlinkMessage::DelRoute(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e.context(format!("delete route {}", self.route_text(&route)))),
        }
    }

    /// The IPv4 unicast routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self
            .sock
            .dump(RouteNetlinkMessage::GetRoute(req))
            .map_err(|e| e.context("list routes"))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .collect())
    }

    fn route_text(&mut self, route: &Route) -> String {
        let mut text = match route.dst {
            Some(d) => d.to_string(),
            None => "default".to_string(),
        };
        if let Some(g) = route.gateway {
            text.push_str(&format!(" via {g}"));
        }
        if let Some(o) = route.oif {
            let name = self.describe(o);
            text.push_str(&format!(" dev {name}"));
        }
        text
    }
}
