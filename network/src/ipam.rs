//! Address allocation: the lowest host address of the subnet that is not
//! the gateway and not leased. Lowest-first keeps addresses small and
//! predictable (the first container on "bridge" is 10.89.0.2, as on Docker).

use std::net::Ipv4Addr;

use crate::cidr::{self, Ipv4Cidr};

/// None when every host address is taken.
pub(crate) fn lowest_free(
    subnet: Ipv4Cidr,
    gateway: Ipv4Addr,
    leased: &[Ipv4Addr],
) -> Option<Ipv4Addr> {
    let network = u32::from(cidr::network(subnet));
    let broadcast = u32::from(cidr::broadcast(subnet));
    // Network and broadcast addresses are never hosts; a /31 or /32 has
    // none (`create` refuses those).
    (network.checked_add(1)?..broadcast)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway && !leased.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_after_the_gateway() {
        let s: Ipv4Cidr = "10.89.0.0/24".parse().unwrap();
        let gw = ip("10.89.0.1");
        assert_eq!(lowest_free(s, gw, &[]), Some(ip("10.89.0.2")));
        assert_eq!(
            lowest_free(s, gw, &[ip("10.89.0.2")]),
            Some(ip("10.89.0.3"))
        );
        // A released address is handed out again before higher ones.
        assert_eq!(
            lowest_free(s, gw, &[ip("10.89.0.3"), ip("10.89.0.4")]),
            Some(ip("10.89.0.2"))
        );
    }

    #[test]
    fn never_network_broadcast_or_gateway() {
        let s: Ipv4Cidr = "10.89.7.0/30".parse().unwrap();
        let gw = ip("10.89.7.1");
        assert_eq!(lowest_free(s, gw, &[]), Some(ip("10.89.7.2")));
        assert_eq!(lowest_free(s, gw, &[ip("10.89.7.2")]), None);
        let tiny: Ipv4Cidr = "10.89.7.0/31".parse().unwrap();
        assert_eq!(lowest_free(tiny, gw, &[]), None);
    }
}
