//! Address pools: the addresses in a WireGuard interface's own subnets, and how many of them
//! no peer's allowed IPs (and not the interface itself) use, per family.

use std::net::IpAddr;

use ipnet::IpNet;

/// Size and free addresses of one family's pool.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pool {
    pub size: f64,
    pub free: f64,
}

/// `own`: the interface's addresses with their prefix lengths (10.99.0.1/24); `used`: the
/// peers' allowed IPs. Counts are exact up to 2^53 and approximate above (IPv6 /64 pools
/// are 2^64 addresses: a gauge cannot tell one used address there).
pub fn pools(own: &[IpNet], used: &[IpNet]) -> (Option<Pool>, Option<Pool>) {
    let family = |v4: bool| -> Option<Pool> {
        let subnets: Vec<(u128, u128)> =
            own.iter().filter(|n| n.addr().is_ipv4() == v4).map(|n| range(&n.trunc())).collect();
        if subnets.is_empty() {
            return None;
        }
        let subnets = union(subnets);
        let size: u128 = subnets.iter().map(|(a, b)| b - a + 1).sum();
        // What is taken inside the subnets: the interface's own addresses and the peers'.
        let mut taken: Vec<(u128, u128)> = Vec::new();
        let hosts = own.iter().filter(|n| n.addr().is_ipv4() == v4).map(|n| host(n.addr()));
        for r in hosts.chain(used.iter().filter(|n| n.addr().is_ipv4() == v4).map(range)) {
            for s in &subnets {
                let (a, b) = (r.0.max(s.0), r.1.min(s.1));
                if a <= b {
                    taken.push((a, b));
                }
            }
        }
        let taken: u128 = union(taken).iter().map(|(a, b)| b - a + 1).sum();
        Some(Pool { size: size as f64, free: (size - taken) as f64 })
    };
    (family(true), family(false))
}

fn host(a: IpAddr) -> (u128, u128) {
    let v = to_u128(a);
    (v, v)
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// First and last address of a prefix.
fn range(n: &IpNet) -> (u128, u128) {
    (to_u128(n.network()), to_u128(n.broadcast()))
}

/// Merges overlapping or adjacent ranges.
fn union(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn free_addresses_go_down_by_what_peers_take() {
        let own = nets(&["10.99.0.1/24", "fd99::1/64"]);
        let (v4, v6) = pools(&own, &nets(&["10.99.0.2/32"]));
        assert_eq!(v4, Some(Pool { size: 256.0, free: 254.0 }));
        assert_eq!(v6.unwrap().size, 2f64.powi(64));
        let (v4, _) =
            pools(&own, &nets(&["10.99.0.2/32", "10.99.0.3/32", "10.99.0.16/28", "10.99.0.20/32", "192.168.0.0/16"]));
        // .2, .3 and .16–.31 (the /32 inside the /28 counts once); the /16 is elsewhere.
        assert_eq!(v4, Some(Pool { size: 256.0, free: 256.0 - 1.0 - 2.0 - 16.0 }));
        // A peer routing everything takes the whole pool.
        assert_eq!(pools(&own, &nets(&["0.0.0.0/0"])).0, Some(Pool { size: 256.0, free: 0.0 }));
        assert_eq!(pools(&nets(&["10.0.0.1/24"]), &[]).1, None);
    }
}
