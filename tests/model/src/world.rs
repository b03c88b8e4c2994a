//! The device both sides see: four peers whose allowed IPs nest and overlap (so longest-prefix
//! matching is exercised: host addresses, a /25 inside a /24, a /16 around a /128), their UDP
//! endpoints, and this device's listen port and addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use wg_collector::wireguard::{Key, Peer};

pub const LISTEN_PORT: u16 = 51820;
/// Peer slots the programs are loaded with.
pub const MAX_PEERS: u32 = 16;
/// Places of the pending table: small, so questions share places and displace each other.
pub const PENDING_PLACES: u32 = 64;
/// This device's own addresses (the local end of plaintext flows, the underlay's source).
pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const LOCAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xffff, 0, 0, 0, 0, 0, 0xfe);
pub const UNDERLAY_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const UNDERLAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// One peer as configured.
pub struct PeerDef {
    pub key: Key,
    pub allowed: Vec<IpNet>,
    pub endpoint: Option<SocketAddr>,
}

pub fn peers() -> Vec<PeerDef> {
    let def = |n: u8, allowed: &[&str], endpoint: Option<&str>| PeerDef {
        key: Key([n; 32]),
        allowed: allowed.iter().map(|a| a.parse().unwrap()).collect(),
        endpoint: endpoint.map(|e| e.parse().unwrap()),
    };
    vec![
        def(1, &["10.0.0.1/32", "10.0.1.0/24", "fd00::1/128"], Some("192.0.2.7:51821")),
        def(2, &["10.0.0.2/32", "10.0.0.3/32", "fd00:1::/64", "10.1.0.0/16"], Some("[2001:db8::7]:51822")),
        def(3, &["172.16.0.9/32", "10.0.1.128/25", "fd00::/16"], Some("192.0.2.8:51820")),
        def(4, &["198.51.100.0/24"], None),
    ]
}

/// The same as WireGuard state, for the collector's sync.
pub fn wireguard_peers() -> Vec<Peer> {
    peers()
        .into_iter()
        .map(|d| {
            let mut p = Peer::new(d.key);
            p.allowed_ips = d.allowed;
            p.endpoint = d.endpoint;
            p
        })
        .collect()
}

/// The peer whose allowed IPs hold `a` most specifically (as WireGuard routes).
pub fn peer_of_address(a: IpAddr) -> Option<Key> {
    peers()
        .into_iter()
        .flat_map(|d| d.allowed.into_iter().map(move |n| (n, d.key)))
        .filter(|(n, _)| n.contains(&a))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, k)| k)
}

/// The peer at UDP endpoint `e`.
pub fn peer_of_endpoint(e: SocketAddr) -> Option<Key> {
    // IPv4-mapped IPv6 is the same host as the IPv4 address.
    let canon = |e: SocketAddr| SocketAddr::new(e.ip().to_canonical(), e.port());
    peers().into_iter().find(|d| d.endpoint.map(canon) == Some(canon(e))).map(|d| d.key)
}

/// Remote addresses packets are made with: each peer's, neighbours, and nobody's.
pub const REMOTE_V4: [Ipv4Addr; 10] = [
    Ipv4Addr::new(10, 0, 0, 1),
    Ipv4Addr::new(10, 0, 0, 2),
    Ipv4Addr::new(10, 0, 0, 3),
    Ipv4Addr::new(10, 0, 1, 5),
    Ipv4Addr::new(10, 0, 1, 200),
    Ipv4Addr::new(10, 1, 2, 3),
    Ipv4Addr::new(172, 16, 0, 9),
    Ipv4Addr::new(198, 51, 100, 77),
    Ipv4Addr::new(10, 0, 0, 9),
    Ipv4Addr::new(192, 0, 2, 99),
];
pub const REMOTE_V6: [Ipv6Addr; 5] = [
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
];

/// Endpoints underlay datagrams are made with: the peers', and strangers.
pub fn remote_endpoints() -> [SocketAddr; 6] {
    [
        "192.0.2.7:51821",
        "[2001:db8::7]:51822",
        "192.0.2.8:51820",
        "192.0.2.7:51899",
        "203.0.113.5:4000",
        "[2001:db8::9]:51820",
    ]
    .map(|e| e.parse().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_prefix_wins() {
        let p = |s: &str| peer_of_address(s.parse().unwrap()).map(|k| k.0[0]);
        assert_eq!(p("10.0.1.5"), Some(1));
        assert_eq!(p("10.0.1.200"), Some(3), "the /25 inside the /24");
        assert_eq!(p("fd00::1"), Some(1), "the /128 inside the /16");
        assert_eq!(p("fd00::2"), Some(3));
        assert_eq!(p("fd00:1::5"), Some(2));
        assert_eq!(p("10.0.0.9"), None);
        assert_eq!(peer_of_endpoint("[::ffff:192.0.2.8]:51820".parse().unwrap()).map(|k| k.0[0]), Some(3));
    }
}
