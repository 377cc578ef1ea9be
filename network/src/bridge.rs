//! A network's Linux bridge: made on the first connect (with the gateway
//! address, up), and the containers' TAPs enslaved to it. Everything here
//! is idempotent, so a connect after a crash repairs what it finds.

use bulkhead_netlink::{Ipv4Cidr, Netlink, NetlinkError};

use crate::{NetworkDef, NetworkError};

/// Makes sure `def`'s bridge exists, has the gateway address (and no
/// other IPv4 address), forwards, and is up. Returns its index.
pub(crate) fn ensure(nl: &mut Netlink, def: &NetworkDef) -> Result<u32, NetworkError> {
    nl.add_bridge(&def.bridge)?;
    let link = nl
        .link_by_name(&def.bridge)?
        .ok_or_else(|| NetlinkError::NoSuchLink {
            name: def.bridge.clone(),
        })?;
    // A bridge takes the lowest MAC of its ports, so each TAP that comes or
    // goes would change the gateway's MAC under the containers' ARP caches.
    // A MAC of its own keeps it fixed.
    let mac = bridge_mac(&def.bridge);
    if link.mac != Some(mac) {
        nl.set_mac(link.index, mac)?;
    }
    let gateway = Ipv4Cidr {
        addr: def.gateway,
        prefix: def.subnet.prefix,
    };
    let addresses = nl.addresses(link.index)?;
    // A bridge left from an older network of the same name may carry its
    // old gateway: that address would route the wrong subnet here.
    for stale in addresses.iter().filter(|a| **a != gateway) {
        nl.delete_address(link.index, *stale)?;
    }
    if !addresses.contains(&gateway) {
        nl.add_address(link.index, gateway)?;
    }
    // DNAT from 127.0.0.1 (the output chain) sends loopback-sourced packets
    // out the bridge; the kernel drops those as martians unless allowed.
    // The bridge's own setting goes first: it names a link of this netns,
    // so a /proc/sys that were not this thread's would fail here before
    // ip_forward is touched.
    sysctl(
        &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", def.bridge),
        "1",
    )?;
    sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    if !link.up {
        nl.set_up(link.index, true)?;
    }
    Ok(link.index)
}

/// Enslaves the TAP `tap` to the bridge at `bridge` and brings it up.
/// Returns the TAP's index.
pub(crate) fn attach(nl: &mut Netlink, tap: &str, bridge: u32) -> Result<u32, NetworkError> {
    let link = nl.link_by_name(tap)?.ok_or_else(|| NetworkError::NoTap {
        name: tap.to_owned(),
        place: "the caller's network namespace",
    })?;
    if link.master != Some(bridge) {
        nl.set_master(link.index, Some(bridge))?;
    }
    // A container reaching its own published port through the host: the
    // DNAT'd frame must go back out the port it came in on.
    nl.set_hairpin(link.index, true)?;
    if !link.up {
        nl.set_up(link.index, true)?;
    }
    Ok(link.index)
}

/// Takes a TAP off its bridge (undoing `attach` after a later failure).
pub(crate) fn detach(nl: &mut Netlink, tap: u32) -> Result<(), NetworkError> {
    Ok(nl.set_master(tap, None)?)
}

/// Deletes the bridge `name` if it is there (and is a bridge).
pub(crate) fn delete(nl: &mut Netlink, name: &str) -> Result<(), NetworkError> {
    match nl.link_by_name(name)? {
        Some(link) if link.kind.as_deref() == Some("bridge") => Ok(nl.delete_link(link.index)?),
        _ => Ok(()),
    }
}

/// The MAC of the bridge `name`: stable, locally administered.
pub(crate) fn bridge_mac(name: &str) -> [u8; 6] {
    crate::mac_for(&format!("bridge {name}"))
}

/// Writes a /proc/sys value unless it already has it. /proc/sys/net
/// resolves to the netns of the calling thread.
fn sysctl(path: &str, value: &'static str) -> Result<(), NetworkError> {
    let err = |source| NetworkError::Sysctl {
        path: path.to_owned(),
        value,
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(now) if now.trim() == value => Ok(()),
        Ok(_) => std::fs::write(path, value).map_err(err),
        Err(e) => Err(err(e)),
    }
}
