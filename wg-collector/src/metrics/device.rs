//! Each WireGuard device: what it is, its link, its configuration's changes, its peers'
//! number and its address pools (WireGuard's own state, read at scrape time).

use super::family::{always, Family, Group, Samples, Type};
use super::page::{DeviceLabels, Page};

pub const GROUP: Group = Group {
    name: "device",
    families: &[
        Family {
            name: "wireguard_device_info",
            help: "WireGuard device: its public key, listen port, fwmark and implementation (value 1)",
            kind: Type::Gauge,
            labels: &["device", "public_key", "listen_port", "fwmark", "implementation"],
            per_peer: None,
            shown: always,
            samples: info,
        },
        Family {
            name: "wireguard_device_up",
            help: "1 while the device's link is up with carrier (IFF_UP, IFF_RUNNING); 0 when down or deleted",
            kind: Type::Gauge,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for l in &page.snap.links {
                    s.gauge(&DeviceLabels::link(l), l.state.up as i64)?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_device_flaps",
            help: "Times the device's link went down, was deleted or replaced since the collector started (from link events as they happen)",
            kind: Type::Counter,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for l in &page.snap.links {
                    s.counter(&DeviceLabels::link(l), l.state.flaps)?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_config_changes",
            help: "Configuration changes seen since the collector started, by field: private_key (seen as a new public key), listen_port, fwmark, peers (added or removed), allowed_ips, endpoint (set by configuration, not roaming)",
            kind: Type::Counter,
            labels: &["device", "field"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for d in &page.snap.devices {
                    for (field, n) in &d.lifecycle.config_changes {
                        s.counter(&(DeviceLabels::of(&d.found), [("field", field.label())]), *n)?;
                    }
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_peers",
            help: "Peers configured on the device",
            kind: Type::Gauge,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| s.device_gauges(page, |d| d.state.peers.len() as i64),
        },
        Family {
            name: "wireguard_peers_active",
            help: "Peers whose last handshake is younger than 180 s (a live session)",
            kind: Type::Gauge,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| s.device_gauges(page, |d| d.active as i64),
        },
        Family {
            name: "wireguard_peers_added",
            help: "Peers that appeared on the device since the collector started (its first reading of a device adds none)",
            kind: Type::Counter,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| s.device_counters(page, |d| d.lifecycle.added),
        },
        Family {
            name: "wireguard_peers_removed",
            help: "Peers that disappeared from the device since the collector started",
            kind: Type::Counter,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| s.device_counters(page, |d| d.lifecycle.removed),
        },
        Family {
            name: "wireguard_address_pool_size",
            help: "Addresses in the WireGuard interface's own subnets, per family",
            kind: Type::Gauge,
            labels: &["device", "family"],
            per_peer: None,
            shown: always,
            samples: |page, s| pools(page, s, |p| p.size),
        },
        Family {
            name: "wireguard_address_pool_free",
            help: "Addresses of those subnets that neither the interface nor any peer's allowed IPs use, per family",
            kind: Type::Gauge,
            labels: &["device", "family"],
            per_peer: None,
            shown: always,
            samples: |page, s| pools(page, s, |p| p.free),
        },
    ],
};

fn info(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for d in &page.snap.devices {
        let key = d.state.public_key.map(|k| k.to_base64()).unwrap_or_default();
        let labels = [
            ("public_key", key),
            ("listen_port", d.state.listen_port.to_string()),
            ("fwmark", d.state.fwmark.to_string()),
            ("implementation", d.found.implementation.to_string()),
        ];
        s.gauge(&(DeviceLabels::of(&d.found), labels), 1i64)?;
    }
    Ok(())
}

fn pools(page: &Page, s: &mut Samples, value: fn(&crate::pool::Pool) -> f64) -> std::fmt::Result {
    for d in &page.snap.devices {
        for (fam, pool) in [("ipv4", d.pools.0), ("ipv6", d.pools.1)] {
            if let Some(pool) = pool {
                s.gauge(&(DeviceLabels::of(&d.found), [("family", fam)]), value(&pool))?;
            }
        }
    }
    Ok(())
}
