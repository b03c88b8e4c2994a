//! Each peer as WireGuard reports it: who it is, where it is, what it may send, its bytes
//! and its last handshake (read at scrape time).

use std::fmt::Write as _;

use super::family::{always, one_per_peer, Family, Group, Samples, Type};
use super::page::Page;

const PEER: &[&str] = &["device", "public_key"];

pub const GROUP: Group = Group {
    name: "peer",
    families: &[
        Family {
            name: "wireguard_peer_info",
            help: "WireGuard peer: its friendly name (names file, or friendly_name comments in wg-quick files) and current endpoint (value 1)",
            kind: Type::Gauge,
            labels: &["device", "public_key", "name", "endpoint"],
            per_peer: Some(one_per_peer),
            shown: always,
            samples: info,
        },
        Family {
            name: "wireguard_peer_allowed_ips_info",
            help: "One allowed IP of a peer (value 1)",
            kind: Type::Gauge,
            labels: &["device", "public_key", "allowed_ip"],
            per_peer: Some(|v| v.peer.allowed_ips.len()),
            shown: |opts, _| !opts.redact_allowed_ips,
            samples: allowed_ips,
        },
        Family {
            name: "wireguard_peer_endpoint_changes",
            help: "Times the peer's endpoint changed since the collector started (roaming, or set anew)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(one_per_peer),
            shown: always,
            samples: |page, s| s.peer_counters(page, |_, row| row.endpoint_changes),
        },
        Family {
            name: "wireguard_peer_receive_bytes",
            help: "Bytes received from the peer, as WireGuard counts them (encrypted UDP payload)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(one_per_peer),
            shown: always,
            samples: |page, s| s.peer_counters(page, |p, _| p.rx_bytes),
        },
        Family {
            name: "wireguard_peer_transmit_bytes",
            help: "Bytes sent to the peer, as WireGuard counts them (encrypted UDP payload)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(one_per_peer),
            shown: always,
            samples: |page, s| s.peer_counters(page, |p, _| p.tx_bytes),
        },
        Family {
            name: "wireguard_peer_last_handshake_seconds",
            help: "Unix time of the peer's last completed handshake; 0 = never",
            kind: Type::Gauge,
            labels: PEER,
            per_peer: Some(one_per_peer),
            shown: always,
            samples: last_handshake,
        },
        Family {
            name: "wireguard_latest_handshake_seconds",
            help: "Unix time of the peer's last completed handshake; 0 = never (the name the usual staleness alert uses)",
            kind: Type::Gauge,
            labels: PEER,
            // With --compat, prometheus_wireguard_exporter's family of this name takes its place.
            per_peer: Some(one_per_peer),
            shown: |opts, _| !opts.compat.on,
            samples: last_handshake,
        },
        Family {
            name: "wireguard_peer_up",
            help: "1 while the peer's last handshake is younger than --peer.up-after (default 180 s; WireGuard shakes hands every 2 minutes while traffic flows), else 0; 0 for a peer that never completed one",
            kind: Type::Gauge,
            labels: PEER,
            per_peer: Some(one_per_peer),
            shown: always,
            samples: up,
        },
    ],
};

fn info(page: &Page, s: &mut Samples) -> std::fmt::Result {
    let mut endpoint = String::new();
    for (p, row, l) in page.peers() {
        endpoint.clear();
        if let Some(e) = p.endpoint.filter(|_| !page.opts.redact_endpoints) {
            write!(endpoint, "{e}")?;
        }
        // Its own name label, with or without --metrics.peer-name-label (which puts it in
        // every peer's labels already).
        let endpoint = ("endpoint", endpoint.as_str());
        match l.name {
            Some(_) => s.gauge(&(l, [endpoint]), 1i64)?,
            None => s.gauge(&(l, [("name", row.name.as_deref().unwrap_or("")), endpoint]), 1i64)?,
        }
    }
    Ok(())
}

fn allowed_ips(page: &Page, s: &mut Samples) -> std::fmt::Result {
    let mut buf = String::new();
    for (p, _, labels) in page.peers() {
        for net in &p.allowed_ips {
            buf.clear();
            write_net(&mut buf, net)?;
            s.gauge(&(labels, [("allowed_ip", buf.as_str())]), 1i64)?;
        }
    }
    Ok(())
}

/// `net` as its Display writes it. IPv4 digit by digit: through `fmt` each octet is a
/// formatter call, and at 10,000 peers the allowed IPs' formatting was 5 % of a scrape's CPU
/// (a profile in the kernel guest).
fn write_net(buf: &mut String, net: &ipnet::IpNet) -> std::fmt::Result {
    let ipnet::IpNet::V4(v4) = net else { return write!(buf, "{net}") };
    let decimal = |buf: &mut String, n: u8| {
        if n >= 100 {
            buf.push(char::from(b'0' + n / 100));
        }
        if n >= 10 {
            buf.push(char::from(b'0' + n / 10 % 10));
        }
        buf.push(char::from(b'0' + n % 10));
    };
    for (i, octet) in v4.addr().octets().into_iter().enumerate() {
        if i > 0 {
            buf.push('.');
        }
        decimal(buf, octet);
    }
    buf.push('/');
    decimal(buf, v4.prefix_len());
    Ok(())
}

fn last_handshake(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for (p, _, labels) in page.peers() {
        s.gauge(&labels, p.last_handshake.map_or(0.0, |t| t.as_secs_f64()))?;
    }
    Ok(())
}

fn up(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for (p, _, labels) in page.peers() {
        let young = p.last_handshake.is_some_and(|t| page.snap.wall.saturating_sub(t) < page.opts.up_after);
        s.gauge(&labels, young as i64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_net;

    /// The same text as Display, for every octet value and prefix length and for IPv6.
    #[test]
    fn allowed_ips_are_written_as_display_writes_them() {
        let mut buf = String::new();
        for n in 0..=255u8 {
            for net in [format!("{n}.0.{n}.255/{}", n % 33), format!("10.{n}.9.{n}/32"), format!("fd00:{n:x}::/64")] {
                let net: ipnet::IpNet = net.parse().unwrap();
                buf.clear();
                write_net(&mut buf, &net).unwrap();
                assert_eq!(buf, net.to_string());
            }
        }
    }
}
