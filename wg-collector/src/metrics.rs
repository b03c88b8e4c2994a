//! The Prometheus side: a custom Collector that refreshes the monitor at scrape time and
//! encodes what it saw. Family names and HELP texts are the contract of
//! ../shared/docs/metrics.md (prometheus-client appends `_total` to counters).

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};
use wg_common::{latency::Kind, Unattributed, DIR_RX, DIR_TX};

use crate::{
    histogram::{Buckets, Series},
    monitor::{Monitor, Snapshot},
    wireguard::Key,
};

/// Reads WireGuard and the eBPF maps at every scrape.
#[derive(Debug)]
pub struct WireguardCollector {
    monitor: Arc<Monitor>,
    buckets: Buckets,
}

impl WireguardCollector {
    pub fn new(monitor: Arc<Monitor>, buckets: Buckets) -> Self {
        Self { monitor, buckets }
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
        encode_snapshot(&snap, &self.buckets, &mut enc)
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

fn encode_snapshot(snap: &Snapshot, buckets: &Buckets, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    use MetricType::{Counter, Gauge, Histogram};

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

    // --- Latency, from the kernel's histograms ------------------------------------------
    // Per device: peer → kind → series, and the device's sum over its peers per kind.
    let mut per_peer: Vec<BTreeMap<(Key, u16), Series>> = Vec::new();
    for d in &snap.devices {
        let mut m: BTreeMap<(Key, u16), Series> = BTreeMap::new();
        for (peer, k, v) in &d.latency {
            m.entry((*peer, k.kind)).or_default().add(k.bucket, v.count, v.sum_ns);
        }
        per_peer.push(m);
    }
    let mut m = family(enc, "wireguard_peer_latency_seconds", "Round trip through the tunnel to the peer, per packet, measured by eBPF on the WireGuard interface: method tcp_ts (TCP timestamp echoed), tcp_syn (SYN answered by SYN-ACK), icmp (echo answered). Only peers with samples", Histogram)?;
    for (d, series) in snap.devices.iter().zip(&per_peer) {
        for ((peer, kind), s) in series {
            let Some(kind) = Kind::from_u16(*kind) else { continue };
            let labels = [("device", d.found.name.clone()), ("public_key", peer.to_base64()), ("method", kind.label().to_string())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(s.sum_seconds(), s.count, &s.exposition(buckets), None)?;
        }
    }
    let mut m = family(enc, "wireguard_device_latency_seconds", "Round trip through the tunnel, all peers of the device together, by method (see wireguard_peer_latency_seconds)", Histogram)?;
    for (d, series) in snap.devices.iter().zip(&per_peer) {
        if d.latency_stats.is_none() {
            continue;
        }
        for kind in Kind::ALL {
            let mut total = Series::default();
            for ((_, k), s) in series {
                if *k == kind as u16 {
                    total.merge(s);
                }
            }
            let labels = [("device", d.found.name.as_str()), ("method", kind.label())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(total.sum_seconds(), total.count, &total.exposition(buckets), None)?;
        }
    }
    let latency = || snap.devices.iter().filter_map(|d| d.latency_stats.map(|s| (d, s)));
    let mut m = family(enc, "wireguard_collector_latency_pending", "Packets waiting for their answer to become a latency sample (the pending map's fill)", Gauge)?;
    for (d, _) in latency() {
        gauge(&mut m, &[("device", d.found.name.as_str())], d.pending as i64)?;
    }
    let mut m = family(enc, "wireguard_collector_latency_pending_capacity", "Packets that may wait for their answer at once (--latency.max-pending)", Gauge)?;
    for (d, s) in latency() {
        gauge(&mut m, &[("device", d.found.name.as_str())], s.capacity as i64)?;
    }
    let mut m = family(enc, "wireguard_collector_latency_pending_evictions", "Packets that gave up waiting for their answer: expired (older than --latency.pending-ttl, removed by the collector) or full (not recorded: the pending map was full)", Counter)?;
    for (d, s) in latency() {
        counter(&mut m, &[("device", d.found.name.as_str()), ("reason", "expired")], s.expired)?;
        counter(&mut m, &[("device", d.found.name.as_str()), ("reason", "full")], s.pending_full)?;
    }
    let mut m = family(enc, "wireguard_collector_latency_samples_dropped", "Latency samples lost because the histogram map was full (--latency.max-hist-entries)", Counter)?;
    for (d, s) in latency() {
        counter(&mut m, &[("device", d.found.name.as_str())], s.hist_full)?;
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
