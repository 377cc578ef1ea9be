//! Synchronous rtnetlink for bulkhead: links, IPv4 addresses and routes, and
//! the tc redirect that joins a TAP to a container's interface.
//!
//! Pure Rust on `netlink-packet-route` and `netlink-sys`, no async runtime,
//! no `ip` or `tc` binaries: the same code runs on the host and in the static
//! guest agent. A [`Netlink`] talks to the network namespace of the thread
//! that opened it; [`in_netns`] runs code in another.

mod address;
mod cidr;
mod error;
mod link;
mod netns;
mod route;
mod socket;
mod tc;

pub use cidr::Ipv4Cidr;
pub use error::NetlinkError;
pub use link::Link;
pub use netns::in_netns;
pub use route::Route;

/// One `NETLINK_ROUTE` socket, bound to the network namespace of the thread
/// that opened it (it stays there even when that thread moves on).
pub struct Netlink {
    sock: socket::RouteSocket,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let sock = socket::RouteSocket::open().map_err(|source| NetlinkError::Io {
            op: "open a NETLINK_ROUTE socket".into(),
            source,
        })?;
        Ok(Netlink { sock })
    }
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod testns;
#[cfg(test)]
mod tests;
