//! `--compat prometheus-wireguard-exporter`: the families of prometheus_wireguard_exporter
//! (3.6), with its names, HELP texts, types, labels and label order, so that dashboards and
//! alerts written for it keep working. Its options map to `--compat.separate-allowed-ips`
//! (-s), `--compat.remote-ip-port` (-r), `--compat.handshake-delay` (-d); friendly_name (-n)
//! comes from our names (`--names.wg-config` reads the same comments). Our own
//! wireguard_latest_handshake_seconds gives way to its namesake here (peer.rs).

use std::fmt::Write as _;

use super::family::{one_per_peer, Family, Group, Samples, Type};
use super::page::{DeviceLabels, ExportOptions, Page, Row};
use crate::{refresh::Snapshot, wireguard::Peer};

/// What `--compat` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compat {
    /// The exporter's families are on the page.
    pub on: bool,
    /// `allowed_ip_N`/`allowed_subnet_N` labels instead of one `allowed_ips` (its -s).
    pub separate_allowed_ips: bool,
    /// `remote_ip` and `remote_port` labels (its -r).
    pub remote_ip_port: bool,
    /// wireguard_latest_handshake_delay_seconds (its -d).
    pub handshake_delay: bool,
}

/// The labels of its plain form (numbered allowed_ip_N and remote_ip/remote_port with its
/// options; friendly_name only for named peers).
const LABELS: &[&str] = &["interface", "public_key", "allowed_ips", "friendly_name"];

fn on(opts: &ExportOptions, _: &Snapshot) -> bool {
    opts.compat.on
}

pub const GROUP: Group = Group {
    name: "compat",
    families: &[
        Family {
            name: "wireguard_sent_bytes",
            help: "Bytes sent to the peer",
            kind: Type::Counter,
            labels: LABELS,
            per_peer: Some(one_per_peer),
            shown: on,
            samples: |page, s| each(page, s, |p, s, l| s.counter(l, p.tx_bytes)),
        },
        Family {
            name: "wireguard_received_bytes",
            help: "Bytes received from the peer",
            kind: Type::Counter,
            labels: LABELS,
            per_peer: Some(one_per_peer),
            shown: on,
            samples: |page, s| each(page, s, |p, s, l| s.counter(l, p.rx_bytes)),
        },
        Family {
            name: "wireguard_latest_handshake_seconds",
            help: "UNIX timestamp seconds of the last handshake",
            kind: Type::Gauge,
            labels: LABELS,
            per_peer: Some(one_per_peer),
            shown: on,
            samples: |page, s| each(page, s, |p, s, l| s.gauge(l, handshake(p) as i64)),
        },
        Family {
            name: "wireguard_latest_handshake_delay_seconds",
            help: "Seconds from the last handshake",
            kind: Type::Gauge,
            labels: LABELS,
            per_peer: Some(one_per_peer),
            shown: |opts, _| opts.compat.on && opts.compat.handshake_delay,
            // As the exporter: from the last handshake to now, also for a peer that never had
            // one (then since 1970).
            samples: |page, s| {
                let now = page.snap.wall.as_secs();
                each(page, s, |p, s, l| s.gauge(l, now.saturating_sub(handshake(p)) as i64))
            },
        },
    ],
};

fn handshake(p: &Peer) -> u64 {
    p.last_handshake.map_or(0, |t| t.as_secs())
}

/// A peer's labels as the exporter writes them (some label names are numbered).
type Labels = Vec<(String, String)>;

/// Calls `f` for every peer with the exporter's labels for it.
fn each(
    page: &Page,
    s: &mut Samples,
    f: impl Fn(&Peer, &mut Samples, &Labels) -> std::fmt::Result,
) -> std::fmt::Result {
    for (p, row, l) in page.peers() {
        f(p, s, &labels(page, l.device, p, row))?;
    }
    Ok(())
}

/// In the exporter's order: interface, public_key, allowed_ips, friendly_name, remote_ip,
/// then what it appends last: allowed_ip_N/allowed_subnet_N and remote_port. `--redact`
/// holds here too: no allowed IP or endpoint label then. A device in another namespace
/// (`--netns`, which the exporter does not have) adds our netns label after interface.
fn labels(page: &Page, device: DeviceLabels, p: &Peer, row: &Row) -> Labels {
    let c = page.opts.compat;
    let pair = |k: &str, v: String| (k.to_string(), v);
    let mut first = vec![pair("interface", device.device.to_string())];
    first.extend(device.netns.map(|ns| pair("netns", ns.to_string())));
    first.push(pair("public_key", row.key.clone()));
    let mut last = Vec::new();
    if page.opts.redact_allowed_ips {
        // Left out, as wireguard_peer_allowed_ips_info is.
    } else if c.separate_allowed_ips {
        for (i, net) in p.allowed_ips.iter().enumerate() {
            last.push(pair(&format!("allowed_ip_{i}"), net.addr().to_string()));
            last.push(pair(&format!("allowed_subnet_{i}"), net.prefix_len().to_string()));
        }
    } else {
        // As `wg show all dump` writes them: comma-separated, "(none)" for none.
        let mut all = String::new();
        for net in &p.allowed_ips {
            if !all.is_empty() {
                all.push(',');
            }
            let _ = write!(all, "{net}");
        }
        first.push(pair("allowed_ips", if all.is_empty() { "(none)".into() } else { all }));
    }
    if let Some(name) = &row.name {
        first.push(pair("friendly_name", name.clone()));
    }
    if let Some(e) = p.endpoint.filter(|_| c.remote_ip_port && !page.opts.redact_endpoints) {
        first.push(pair("remote_ip", e.ip().to_string()));
        last.push(pair("remote_port", e.port().to_string()));
    }
    first.extend(last);
    first
}
