//! The sweep: leases whose owner is gone (killed, crashed, or a host that
//! rebooted) are removed, so nothing of a container outlives it even
//! after `kill -9`. Each change runs it first; the caller then rebuilds
//! the nftables table, which drops the dead container's ports with it.

use std::net::Ipv4Addr;

use crate::lease;
use crate::store::Store;
use crate::NetworkError;

/// What a sweep removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub removed: Vec<SweptLease>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweptLease {
    pub network: String,
    pub address: Ipv4Addr,
    /// None for a lease file its writer died writing.
    pub container_id: Option<String>,
}

/// Removes every dead lease of every network. The caller holds the lock.
pub(crate) fn dead_leases(store: &Store) -> Result<Sweep, NetworkError> {
    let mut sweep = Sweep::default();
    for def in store.list()? {
        for held in lease::read_all(&store.leases_dir(&def.name))? {
            if held.live().is_some() {
                continue;
            }
            lease::remove(&held.path)?;
            sweep.removed.push(SweptLease {
                network: def.name.clone(),
                address: held.address,
                container_id: held.lease.map(|l| l.container_id),
            });
        }
    }
    Ok(sweep)
}
