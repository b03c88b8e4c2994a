//! The Prometheus side: a custom Collector that refreshes the monitor at scrape time and
//! encodes what it saw. Family names and HELP texts are the contract of
//! ../shared/docs/metrics.md (prometheus-client appends `_total` to counters).

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};
use wg_common::{Unattributed, DIR_RX, DIR_TX};

use crate::monitor::{Monitor, Snapshot};

/// Reads WireGuard and the eBPF maps at every scrape.
#[derive(Debug)]
pub struct WireguardCollector {
    monitor: Arc<Monitor>,
}

impl WireguardCollector {
    pub fn new(monitor: Arc<Monitor>) -> Self {
        Self { monitor }
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Monitor")
    }
}

impl Collector for WireguardCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.monitor.refresh();
        encode_snapshot(&snap, &mut enc)
    }
}

/// One family: its descriptor, then one sample per label set.
fn family<'a>(enc: &'a mut DescriptorEncoder, name: &'a str, help: &str, ty: MetricType) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, ty)
}

fn counter(m: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: impl EncodeCounterValue) -> std::fmt::Result {
    m.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: impl EncodeGaugeValue) -> std::fmt::Result {
    m.encode_family(labels)?.encode_gauge(&v)
}

fn encode_snapshot(snap: &Snapshot, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};

    // --- WireGuard's own state -----------------------------------------------------------
    let mut m = family(enc, "wireguard_device_info", "WireGuard device: its public key, listen port, fwmark and implementation (value 1)", Gauge)?;
    for d in &snap.devices {
        let key = d.state.public_key.map(|k| k.to_base64()).unwrap_or_default();
        let labels = [
            ("device", d.found.name.clone()),
            ("public_key", key),
            ("listen_port", d.state.listen_port.to_string()),
            ("fwmark", d.state.fwmark.to_string()),
            ("implementation", d.found.implementation.to_string()),
        ];
        gauge(&mut m, &labels, 1i64)?;
    }

    let mut m = family(enc, "wireguard_peers", "Peers configured on the device", Gauge)?;
    for d in &snap.devices {
        gauge(&mut m, &[("device", d.found.name.as_str())], d.state.peers.len() as i64)?;
    }

    let peers = || snap.devices.iter().flat_map(|d| d.state.peers.iter().map(move |p| (d, p, [("device", d.found.name.clone()), ("public_key", p.public_key.to_base64())])));

    let mut m = family(enc, "wireguard_peer_info", "WireGuard peer: its name and current endpoint (value 1)", Gauge)?;
    for (_, p, [dev, key]) in peers() {
        let endpoint = p.endpoint.map(|e| e.to_string()).unwrap_or_default();
        gauge(&mut m, &[dev, key, ("name", String::new()), ("endpoint", endpoint)], 1i64)?;
    }

    let mut m = family(enc, "wireguard_peer_allowed_ips_info", "One allowed IP of a peer (value 1)", Gauge)?;
    let mut buf = String::new();
    for (_, p, [dev, key]) in peers() {
        for net in &p.allowed_ips {
            buf.clear();
            write!(buf, "{net}")?;
            gauge(&mut m, &[dev.clone(), key.clone(), ("allowed_ip", buf.clone())], 1i64)?;
        }
    }

    let mut m = family(enc, "wireguard_peer_receive_bytes", "Bytes received from the peer, as WireGuard counts them (encrypted UDP payload)", Counter)?;
    for (_, p, labels) in peers() {
        counter(&mut m, &labels, p.rx_bytes)?;
    }
    let mut m = family(enc, "wireguard_peer_transmit_bytes", "Bytes sent to the peer, as WireGuard counts them (encrypted UDP payload)", Counter)?;
    for (_, p, labels) in peers() {
        counter(&mut m, &labels, p.tx_bytes)?;
    }

    for (name, help) in [
        ("wireguard_peer_last_handshake_seconds", "Unix time of the peer's last completed handshake; 0 = never"),
        ("wireguard_latest_handshake_seconds", "Unix time of the peer's last completed handshake; 0 = never (the name the usual staleness alert uses)"),
    ] {
        let mut m = family(enc, name, help, Gauge)?;
        for (_, p, labels) in peers() {
            gauge(&mut m, &labels, p.last_handshake.map_or(0.0, |t| t.as_secs_f64()))?;
        }
    }

    // --- eBPF, at line rate --------------------------------------------------------------
    for (name, help, dir, bytes) in [
        ("wireguard_peer_receive_packets", "Plaintext packets received from the peer on the WireGuard interface, counted by eBPF (GSO super-packets as their segments)", DIR_RX, false),
        ("wireguard_peer_transmit_packets", "Plaintext packets sent to the peer on the WireGuard interface, counted by eBPF (GSO super-packets as their segments)", DIR_TX, false),
        ("wireguard_peer_receive_payload_bytes", "Plaintext bytes (IP packets) received from the peer on the WireGuard interface, counted by eBPF", DIR_RX, true),
        ("wireguard_peer_transmit_payload_bytes", "Plaintext bytes (IP packets) sent to the peer on the WireGuard interface, counted by eBPF", DIR_TX, true),
    ] {
        let mut m = family(enc, name, help, Counter)?;
        for (d, p, labels) in peers() {
            if let Some(c) = d.counters.get(&p.public_key) {
                counter(&mut m, &labels, if bytes { c.dir[dir].bytes } else { c.dir[dir].packets })?;
            }
        }
    }

    let mut m = family(enc, "wireguard_unattributed_packets", "Packets on the WireGuard interface that matched no peer, by direction and reason (no_peer, not_ip, truncated); passed on, never dropped", Counter)?;
    for d in &snap.devices {
        let Some(u) = &d.unattributed else { continue };
        for (dir, dname) in [(DIR_RX, "receive"), (DIR_TX, "transmit")] {
            for r in Unattributed::ALL {
                counter(&mut m, &[("device", d.found.name.as_str()), ("direction", dname), ("reason", r.label())], u[dir][r as usize].packets)?;
            }
        }
    }

    // --- The collector itself ------------------------------------------------------------
    let mut implementations: Vec<String> = snap.devices.iter().map(|d| d.found.implementation.to_string()).collect();
    implementations.sort();
    implementations.dedup();
    let mut m = family(enc, "wireguard_collector_build_info", "The collector's version and the WireGuard implementations it found (value 1)", Gauge)?;
    gauge(&mut m, &[("version", env!("CARGO_PKG_VERSION").to_string()), ("implementations", implementations.join(","))], 1i64)?;

    let mut m = family(enc, "wireguard_collector_scrape_duration_seconds", "Time this scrape spent reading each source", Gauge)?;
    for (source, t) in &snap.durations {
        gauge(&mut m, &[("source", source.label())], t.as_secs_f64())?;
    }

    let mut m = family(enc, "wireguard_collector_errors", "Errors reading each source since the collector started", Counter)?;
    for (source, n) in &snap.errors {
        counter(&mut m, &[("source", source.label())], *n)?;
    }

    let stats = || snap.devices.iter().flat_map(|d| d.program_stats.iter().map(move |s| (d, s)));
    if stats().any(|(_, s)| s.runs > 0) {
        let mut m = family(enc, "wireguard_collector_bpf_run_time_seconds", "Time the kernel spent in each of our programs (bpf stats; only while enabled with --bpf.stats)", Counter)?;
        for (d, s) in stats() {
            counter(&mut m, &[("device", d.found.name.as_str()), ("program", s.program)], s.run_time.as_secs_f64())?;
        }
        let mut m = family(enc, "wireguard_collector_bpf_runs", "Runs of each of our programs (bpf stats; only while enabled with --bpf.stats)", Counter)?;
        for (d, s) in stats() {
            counter(&mut m, &[("device", d.found.name.as_str()), ("program", s.program)], s.runs)?;
        }
    }
    Ok(())
}
