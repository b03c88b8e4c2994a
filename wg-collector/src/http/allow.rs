//! `--web.allowed-clients` (or `allowed_clients` under http_server_config in the web
//! configuration file): the client addresses the endpoint answers at all. Others get 403
//! before any authentication work, as a firewall rule would have them, but counted and named.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks clients may come from; none = every client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedClients(pub Vec<IpNet>);

impl AllowedClients {
    /// Whether `ip` may be answered. An IPv4 client of a dual-stack listener arrives as an
    /// IPv4-mapped IPv6 address (::ffff:192.0.2.1): it is matched as the IPv4 address it is.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.is_empty() || self.0.iter().any(|n| n.contains(&ip))
    }
}

/// One entry: a network (10.0.0.0/8, fd00::/8) or one address (192.0.2.7).
pub fn parse_client(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network (CIDR)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_listed_networks_v4_v6_and_mapped() {
        let nets = ["10.1.0.0/16", "192.0.2.7", "fd00::/8"].map(|s| parse_client(s).unwrap());
        let a = AllowedClients(nets.to_vec());
        for (ip, ok) in [
            ("10.1.2.3", true),
            ("10.2.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::ffff:10.1.9.9", true),
            ("::ffff:10.9.9.9", false),
        ] {
            assert_eq!(a.permits(ip.parse().unwrap()), ok, "{ip}");
        }
        assert!(AllowedClients::default().permits("203.0.113.1".parse().unwrap()));
        assert_eq!(parse_client("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(parse_client("nowhere").unwrap_err(), "\"nowhere\" is neither an address nor a network (CIDR)");
    }
}
