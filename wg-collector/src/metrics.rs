//! The Prometheus side: the page of one reading of the monitor (taken at scrape time, or a
//! recent one with `--scrape.max-age`), encoded by custom Collectors. Family names and HELP
//! texts are the contract of ../shared/docs/metrics.md (prometheus-client appends `_total`
//! to counters).

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};
use wg_common::{
    latency::Kind,
    protocol::{Invalid, MessageType},
    PeerCounters, Unattributed, DIR_RX, DIR_TX,
};

use crate::{
    histogram::{Buckets, Series},
    monitor::{DeviceSnapshot, Snapshot},
    wireguard::{Key, Peer},
};

/// What the page shows, beyond what there is.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub buckets: Buckets,
    /// Leave the endpoint label empty (`--redact endpoints`: it maps the network).
    pub redact_endpoints: bool,
    /// Leave out wireguard_peer_allowed_ips_info (`--redact allowed-ips`).
    pub redact_allowed_ips: bool,
    /// At most this many per-peer series (0 = no limit): peers past it are left out whole,
    /// with a warning and wireguard_collector_peers_omitted.
    pub max_series: usize,
    /// A scrape may show a reading that began this long ago (`--scrape.max-age`).
    pub max_age: std::time::Duration,
}

impl ExportOptions {
    /// The defaults of the flags (the fixture's page is rendered with these).
    #[cfg(test)]
    pub fn default_for_tests() -> Self {
        Self { max_series: 2_000_000, ..Default::default() }
    }
}

/// One scrape's page: the reading it shows (trimmed to --metrics.max-series) and each peer's
/// row, made once for every per-peer family.
pub struct Page {
    snap: Arc<Snapshot>,
    /// Peers left out per device.
    omitted: Vec<(String, usize)>,
    rows: Vec<Vec<Row>>,
    opts: ExportOptions,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Page")
    }
}

impl Page {
    pub fn new(snap: Arc<Snapshot>, opts: &ExportOptions) -> Self {
        let (snap, omitted) = if opts.max_series == 0 || total_series(&snap, opts) <= opts.max_series {
            (snap, Vec::new())
        } else {
            // Over the limit (rare): a copy of this scrape's snapshot, trimmed.
            let mut trimmed = Snapshot::clone(&snap);
            let omitted = limit_series(&mut trimmed, opts);
            (Arc::new(trimmed), omitted)
        };
        let rows = snap.devices.iter().map(|d| d.state.peers.iter().map(|p| Row::of(d, p)).collect()).collect();
        Self { snap, omitted, rows, opts: opts.clone() }
    }

    /// The page in two halves of about the same size, each a Collector to register on a
    /// registry of its own: prometheus-client encodes a registry on one thread, and at 10k
    /// peers and more the encoding is most of a scrape, so the halves go on two.
    pub fn halves(self: &Arc<Self>) -> [PageHalf; 2] {
        [PageHalf { page: self.clone(), second: false }, PageHalf { page: self.clone(), second: true }]
    }

    /// Every peer with its row and the labels all per-peer families start with.
    fn peers(&self) -> impl Iterator<Item = (&Peer, &Row, [(&'static str, &str); 2])> {
        self.snap.devices.iter().zip(&self.rows).flat_map(|(d, rows)| {
            d.state
                .peers
                .iter()
                .zip(rows)
                .map(move |(p, row)| (p, row, [("device", d.found.name.as_str()), ("public_key", row.key.as_str())]))
        })
    }
}

/// Half of a [`Page`]: WireGuard's own state, or what the eBPF programs measured and the
/// collector's own families.
#[derive(Debug)]
pub struct PageHalf {
    page: Arc<Page>,
    second: bool,
}

impl Collector for PageHalf {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.second {
            encode_measured(&self.page, &mut enc)
        } else {
            encode_wireguard(&self.page, &mut enc)
        }
    }
}

/// A peer as the per-peer families show it (looked up by key once per scrape: at 10k peers
/// a lookup per family was a tenth of the page's time).
struct Row {
    key: String,
    name: Option<String>,
    counters: Option<PeerCounters>,
    endpoint_changes: u64,
}

impl Row {
    fn of(d: &DeviceSnapshot, p: &Peer) -> Self {
        Row {
            key: p.public_key.to_base64(),
            name: d.names.get(&p.public_key).cloned(),
            counters: d.counters.get(&p.public_key).copied(),
            endpoint_changes: d.lifecycle.endpoint_changes.get(&p.public_key).copied().unwrap_or(0),
        }
    }
}

/// One family: its descriptor, then one sample per label set.
fn family<'a>(
    enc: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    ty: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    enc.encode_descriptor(name, help, None, ty)
}

fn counter(m: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: impl EncodeCounterValue) -> std::fmt::Result {
    m.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder, labels: &impl EncodeLabelSet, v: impl EncodeGaugeValue) -> std::fmt::Result {
    m.encode_family(labels)?.encode_gauge(&v)
}

/// A latency histogram family, per peer and per device.
struct HistFamily {
    peer_name: &'static str,
    peer_help: &'static str,
    device_name: &'static str,
    device_help: &'static str,
    kinds: &'static [Kind],
    /// The label that tells the kinds apart, if there are several.
    label: Option<&'static str>,
}

const HIST_FAMILIES: [HistFamily; 4] = [
    HistFamily {
        peer_name: "wireguard_peer_latency_seconds",
        peer_help: "Round trip through the tunnel to the peer, per packet, measured by eBPF on the WireGuard interface: method tcp_ts (a TCP timestamp echoed), tcp_syn (SYN answered by SYN-ACK), icmp (echo answered). Only peers with samples",
        device_name: "wireguard_device_latency_seconds",
        device_help: "Round trip through the tunnel, all peers of the device together, by method (see wireguard_peer_latency_seconds)",
        kinds: &Kind::RTT,
        label: Some("method"),
    },
    HistFamily {
        peer_name: "wireguard_peer_handshake_rtt_seconds",
        peer_help: "Handshake round trip on the underlay, measured by eBPF: role initiator (our initiation → the peer's response), responder (our response → the peer's first data message). Only peers with samples",
        device_name: "wireguard_device_handshake_rtt_seconds",
        device_help: "Handshake round trip, all peers of the device together (and handshakes with endpoints not yet known), by role",
        kinds: &Kind::HANDSHAKE,
        label: Some("role"),
    },
    HistFamily {
        peer_name: "wireguard_peer_encap_delay_seconds",
        peer_help: "Time a packet to the peer spends inside this host's WireGuard: from the WireGuard interface's egress to its data message leaving the underlay. Only peers with samples",
        device_name: "wireguard_device_encap_delay_seconds",
        device_help: "Encapsulation delay, all peers of the device together",
        kinds: &[Kind::Encap],
        label: None,
    },
    HistFamily {
        peer_name: "wireguard_peer_decap_delay_seconds",
        peer_help: "Time a packet from the peer spends inside this host's WireGuard: from its data message arriving on the underlay to the plaintext arriving on the WireGuard interface. Only peers with samples",
        device_name: "wireguard_device_decap_delay_seconds",
        device_help: "Decapsulation delay, all peers of the device together",
        kinds: &[Kind::Decap],
        label: None,
    },
];

/// Series one peer brings to the page (a close estimate: the families below, per peer);
/// `hist_kinds` = how many latency histograms it has.
fn peer_series(d: &DeviceSnapshot, p: &Peer, hist_kinds: usize, opts: &ExportOptions) -> usize {
    let buckets = match &opts.buckets {
        Buckets::Classic(v) => v.len() + 3,
        Buckets::Full => 400,
    };
    1 + if opts.redact_allowed_ips { 0 } else { p.allowed_ips.len() }
        + 5
        + if d.counters.contains_key(&p.public_key) { 4 } else { 0 }
        + if d.messages.contains_key(&p.public_key) { 10 } else { 0 }
        + hist_kinds * buckets
}

/// How many latency methods each peer has samples of (a histogram family each).
fn latency_kinds(d: &DeviceSnapshot) -> std::collections::HashMap<Key, usize> {
    let mut kinds: std::collections::HashMap<Key, std::collections::HashSet<u16>> = Default::default();
    for (k, h, _) in &d.latency {
        if let Some(k) = k {
            kinds.entry(*k).or_default().insert(h.kind);
        }
    }
    kinds.into_iter().map(|(k, s)| (k, s.len())).collect()
}

/// Per-peer series the snapshot would give.
fn total_series(snap: &Snapshot, opts: &ExportOptions) -> usize {
    snap.devices
        .iter()
        .map(|d| {
            let kinds = latency_kinds(d);
            d.state
                .peers
                .iter()
                .map(|p| peer_series(d, p, kinds.get(&p.public_key).copied().unwrap_or(0), opts))
                .sum::<usize>()
        })
        .sum()
}

/// Drops peers past the series limit from the snapshot; returns how many per device.
fn limit_series(snap: &mut Snapshot, opts: &ExportOptions) -> Vec<(String, usize)> {
    if opts.max_series == 0 {
        return Vec::new();
    }
    let mut budget = opts.max_series;
    let mut omitted = Vec::new();
    for d in &mut snap.devices {
        let kinds = latency_kinds(d);
        let mut keep = Vec::with_capacity(d.state.peers.len());
        let mut dropped = 0;
        for p in std::mem::take(&mut d.state.peers) {
            let n = peer_series(d, &p, kinds.get(&p.public_key).copied().unwrap_or(0), opts);
            if n <= budget {
                budget -= n;
                keep.push(p);
            } else {
                budget = 0;
                dropped += 1;
            }
        }
        d.state.peers = keep;
        if dropped > 0 {
            omitted.push((d.found.name.clone(), dropped));
        }
    }
    if !omitted.is_empty() {
        tracing::warn!(
            limit = opts.max_series,
            ?omitted,
            "series limit reached (--metrics.max-series): peers left out of this scrape"
        );
    }
    omitted
}

/// The first half of the page: WireGuard's own state.
fn encode_wireguard(page: &Page, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let (snap, opts) = (&*page.snap, &page.opts);

    // --- WireGuard's own state -----------------------------------------------------------
    let mut m = family(
        enc,
        "wireguard_device_info",
        "WireGuard device: its public key, listen port, fwmark and implementation (value 1)",
        Gauge,
    )?;
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

    let mut m = family(
        enc,
        "wireguard_device_up",
        "1 while the device's link is up with carrier (IFF_UP, IFF_RUNNING); 0 when down or deleted",
        Gauge,
    )?;
    for (name, link) in &snap.links {
        gauge(&mut m, &[("device", name.as_str())], link.up as i64)?;
    }
    let mut m = family(enc, "wireguard_device_flaps", "Times the device's link went down, was deleted or replaced since the collector started (from link events as they happen)", Counter)?;
    for (name, link) in &snap.links {
        counter(&mut m, &[("device", name.as_str())], link.flaps)?;
    }
    let mut m = family(enc, "wireguard_config_changes", "Configuration changes seen since the collector started, by field: private_key (seen as a new public key), listen_port, fwmark, peers (added or removed), allowed_ips, endpoint (set by configuration, not roaming)", Counter)?;
    for d in &snap.devices {
        for (field, n) in &d.lifecycle.config_changes {
            counter(&mut m, &[("device", d.found.name.as_str()), ("field", field.label())], *n)?;
        }
    }

    let mut m = family(enc, "wireguard_peers", "Peers configured on the device", Gauge)?;
    for d in &snap.devices {
        gauge(&mut m, &[("device", d.found.name.as_str())], d.state.peers.len() as i64)?;
    }

    let mut m = family(
        enc,
        "wireguard_peers_active",
        "Peers whose last handshake is younger than 180 s (a live session)",
        Gauge,
    )?;
    for d in &snap.devices {
        gauge(&mut m, &[("device", d.found.name.as_str())], d.active as i64)?;
    }
    for (name, help, added) in [
        (
            "wireguard_peers_added",
            "Peers that appeared on the device since the collector started (its first reading of a device adds none)",
            true,
        ),
        ("wireguard_peers_removed", "Peers that disappeared from the device since the collector started", false),
    ] {
        let mut m = family(enc, name, help, Counter)?;
        for d in &snap.devices {
            counter(
                &mut m,
                &[("device", d.found.name.as_str())],
                if added { d.lifecycle.added } else { d.lifecycle.removed },
            )?;
        }
    }
    for (name, help, free) in [
        ("wireguard_address_pool_size", "Addresses in the WireGuard interface's own subnets, per family", false),
        (
            "wireguard_address_pool_free",
            "Addresses of those subnets that neither the interface nor any peer's allowed IPs use, per family",
            true,
        ),
    ] {
        let mut m = family(enc, name, help, Gauge)?;
        for d in &snap.devices {
            for (fam, pool) in [("ipv4", d.pools.0), ("ipv6", d.pools.1)] {
                if let Some(pool) = pool {
                    gauge(
                        &mut m,
                        &[("device", d.found.name.as_str()), ("family", fam)],
                        if free { pool.free } else { pool.size },
                    )?;
                }
            }
        }
    }

    let mut m = family(enc, "wireguard_peer_info", "WireGuard peer: its friendly name (names file, or friendly_name comments in wg-quick files) and current endpoint (value 1)", Gauge)?;
    let mut endpoint = String::new();
    for (p, row, [dev, key]) in page.peers() {
        endpoint.clear();
        if let Some(e) = p.endpoint.filter(|_| !opts.redact_endpoints) {
            write!(endpoint, "{e}")?;
        }
        gauge(&mut m, &[dev, key, ("name", row.name.as_deref().unwrap_or("")), ("endpoint", endpoint.as_str())], 1i64)?;
    }

    if !opts.redact_allowed_ips {
        let mut m = family(enc, "wireguard_peer_allowed_ips_info", "One allowed IP of a peer (value 1)", Gauge)?;
        let mut buf = String::new();
        for (p, _, [dev, key]) in page.peers() {
            for net in &p.allowed_ips {
                buf.clear();
                write!(buf, "{net}")?;
                gauge(&mut m, &[dev, key, ("allowed_ip", buf.as_str())], 1i64)?;
            }
        }
    }

    let mut m = family(
        enc,
        "wireguard_peer_endpoint_changes",
        "Times the peer's endpoint changed since the collector started (roaming, or set anew)",
        Counter,
    )?;
    for (_, row, labels) in page.peers() {
        counter(&mut m, &labels, row.endpoint_changes)?;
    }

    let mut m = family(
        enc,
        "wireguard_peer_receive_bytes",
        "Bytes received from the peer, as WireGuard counts them (encrypted UDP payload)",
        Counter,
    )?;
    for (p, _, labels) in page.peers() {
        counter(&mut m, &labels, p.rx_bytes)?;
    }
    let mut m = family(
        enc,
        "wireguard_peer_transmit_bytes",
        "Bytes sent to the peer, as WireGuard counts them (encrypted UDP payload)",
        Counter,
    )?;
    for (p, _, labels) in page.peers() {
        counter(&mut m, &labels, p.tx_bytes)?;
    }

    Ok(())
}

/// The second half: the handshakes, what the eBPF programs measured, the collector itself.
fn encode_measured(page: &Page, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    use MetricType::{Counter, Gauge, Histogram};
    let (snap, opts, omitted) = (&*page.snap, &page.opts, &page.omitted);
    let buckets = &opts.buckets;

    for (name, help) in [
        ("wireguard_peer_last_handshake_seconds", "Unix time of the peer's last completed handshake; 0 = never"),
        (
            "wireguard_latest_handshake_seconds",
            "Unix time of the peer's last completed handshake; 0 = never (the name the usual staleness alert uses)",
        ),
    ] {
        let mut m = family(enc, name, help, Gauge)?;
        for (p, _, labels) in page.peers() {
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
        for (_, row, labels) in page.peers() {
            if let Some(c) = &row.counters {
                counter(&mut m, &labels, if bytes { c.dir[dir].bytes } else { c.dir[dir].packets })?;
            }
        }
    }

    let mut m = family(enc, "wireguard_unattributed_packets", "Packets on the WireGuard interface that matched no peer, by direction and reason (no_peer, not_ip, truncated); passed on, never dropped", Counter)?;
    for d in &snap.devices {
        let Some(u) = &d.unattributed else { continue };
        for (dir, dname) in [(DIR_RX, "receive"), (DIR_TX, "transmit")] {
            for r in Unattributed::ALL {
                counter(
                    &mut m,
                    &[("device", d.found.name.as_str()), ("direction", dname), ("reason", r.label())],
                    u[dir][r as usize].packets,
                )?;
            }
        }
    }

    // --- Latency, from the kernel's histograms ------------------------------------------
    // Per device: (peer, kind) → series; peer None = samples whose peer was not known.
    let mut per_device: Vec<BTreeMap<(Option<Key>, u16), Series>> = Vec::new();
    for d in &snap.devices {
        let mut m: BTreeMap<(Option<Key>, u16), Series> = BTreeMap::new();
        for (peer, k, v) in &d.latency {
            m.entry((*peer, k.kind)).or_default().add(k.bucket, v.count, v.sum_ns);
        }
        per_device.push(m);
    }
    for f in HIST_FAMILIES {
        let mut m = family(enc, f.peer_name, f.peer_help, Histogram)?;
        for (d, series) in snap.devices.iter().zip(&per_device) {
            for ((peer, kind), s) in series {
                let (Some(peer), Some(kind)) = (peer, Kind::from_u16(*kind)) else { continue };
                if !f.kinds.contains(&kind) {
                    continue;
                }
                let mut labels = vec![("device", d.found.name.clone()), ("public_key", peer.to_base64())];
                labels.extend(f.label.map(|l| (l, kind.label().to_string())));
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    s.sum_seconds(),
                    s.count,
                    &s.exposition(buckets),
                    None,
                )?;
            }
        }
        // The device's histograms always exist, empty or not.
        let mut m = family(enc, f.device_name, f.device_help, Histogram)?;
        for (d, series) in snap.devices.iter().zip(&per_device) {
            if d.latency_stats.is_none() {
                continue;
            }
            for kind in f.kinds {
                let mut total = Series::default();
                for ((_, k), s) in series {
                    if *k == *kind as u16 {
                        total.merge(s);
                    }
                }
                let mut labels = vec![("device", d.found.name.clone())];
                labels.extend(f.label.map(|l| (l, kind.label().to_string())));
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    total.sum_seconds(),
                    total.count,
                    &total.exposition(buckets),
                    None,
                )?;
            }
        }
    }
    let latency = || snap.devices.iter().filter_map(|d| d.latency_stats.map(|s| (d, s)));
    let mut m = family(
        enc,
        "wireguard_collector_latency_pending",
        "Packets waiting for their answer to become a latency sample (places taken in the pending table)",
        Gauge,
    )?;
    for (d, _) in latency() {
        gauge(&mut m, &[("device", d.found.name.as_str())], d.pending as i64)?;
    }
    let mut m = family(
        enc,
        "wireguard_collector_latency_pending_capacity",
        "Places in the pending table: packets that may wait for their answer at once (--latency.max-pending)",
        Gauge,
    )?;
    for (d, s) in latency() {
        gauge(&mut m, &[("device", d.found.name.as_str())], s.capacity as i64)?;
    }
    let mut m = family(enc, "wireguard_collector_latency_pending_evictions", "Packets that gave up waiting for their answer: expired (older than --latency.pending-ttl, removed by the collector) or displaced (a newer packet took its place in the pending table, which a hash of the flow picks)", Counter)?;
    for (d, s) in latency() {
        counter(&mut m, &[("device", d.found.name.as_str()), ("reason", "expired")], s.expired)?;
        counter(&mut m, &[("device", d.found.name.as_str()), ("reason", "displaced")], s.displaced)?;
    }
    let mut m = family(enc, "wireguard_collector_delay_fifo_resyncs", "Encap/decap FIFO entries given up: the packet waited over 0.5 s or its size could not be the message's (WireGuard dropped it inside)", Counter)?;
    for (d, s) in latency() {
        counter(&mut m, &[("device", d.found.name.as_str())], s.fifo_resync)?;
    }
    let mut m = family(enc, "wireguard_collector_delay_fifo_overflows", "Encap/decap FIFO entries pushed out because more than 64 packets of one peer were inside WireGuard at once (their packets get no sample)", Counter)?;
    for (d, s) in latency() {
        counter(&mut m, &[("device", d.found.name.as_str())], s.fifo_overflow)?;
    }
    let mut m = family(
        enc,
        "wireguard_collector_latency_samples_dropped",
        "Latency samples lost because the histogram map was full (--latency.max-hist-entries)",
        Counter,
    )?;
    for (d, s) in latency() {
        counter(&mut m, &[("device", d.found.name.as_str())], s.hist_full)?;
    }

    // --- Underlay messages, from the eBPF programs ---------------------------------------
    let mut m = family(enc, "wireguard_messages", "WireGuard messages on the underlay by direction and type (handshake_initiation, handshake_response, cookie_reply, data, keepalive), per peer where the endpoint or the handshake index tells it, else with an empty public_key", Counter)?;
    for d in &snap.devices {
        let dev = d.found.name.as_str();
        let rows =
            d.state.peers.iter().filter_map(|p| Some((p.public_key.to_base64(), d.messages.get(&p.public_key)?)));
        let device = d.device_messages.as_ref().map(|m| (String::new(), m));
        for (key, counts) in rows.chain(device) {
            for (dir, dname) in [(DIR_RX, "receive"), (DIR_TX, "transmit")] {
                for t in MessageType::ALL {
                    let labels =
                        [("device", dev), ("public_key", key.as_str()), ("direction", dname), ("type", t.label())];
                    counter(&mut m, &labels, counts.counts[dir][t as usize])?;
                }
            }
        }
    }
    let mut m = family(enc, "wireguard_invalid_messages", "UDP datagrams to the WireGuard port that are no valid message, by reason: too_short, bad_type, bad_size, unknown_index (a response, cookie or data naming an index never given out, from an unknown endpoint)", Counter)?;
    for d in &snap.devices {
        let Some(inv) = &d.invalid else { continue };
        for r in Invalid::ALL {
            counter(&mut m, &[("device", d.found.name.as_str()), ("reason", r.label())], inv[r as usize])?;
        }
    }

    // --- The collector itself ------------------------------------------------------------
    let mut m = family(
        enc,
        "wireguard_collector_peers_omitted",
        "Peers left out of this page because of --metrics.max-series",
        Gauge,
    )?;
    for d in &snap.devices {
        let n = omitted.iter().find(|(name, _)| *name == d.found.name).map_or(0, |(_, n)| *n);
        gauge(&mut m, &[("device", d.found.name.as_str())], n as i64)?;
    }
    let mut implementations: Vec<String> = snap.devices.iter().map(|d| d.found.implementation.to_string()).collect();
    implementations.sort();
    implementations.dedup();
    let mut m = family(
        enc,
        "wireguard_collector_build_info",
        "The collector's version and the WireGuard implementations it found (value 1)",
        Gauge,
    )?;
    gauge(
        &mut m,
        &[("version", env!("CARGO_PKG_VERSION").to_string()), ("implementations", implementations.join(","))],
        1i64,
    )?;

    let mut m = family(
        enc,
        "wireguard_collector_scrape_duration_seconds",
        "Time this scrape spent reading each source",
        Gauge,
    )?;
    for (source, t) in &snap.durations {
        gauge(&mut m, &[("source", source.label())], t.as_secs_f64())?;
    }

    let mut m = family(enc, "wireguard_collector_reading_age_seconds", "Age of the reading of WireGuard and the maps this page shows: from its start to now (near 0 unless --scrape.max-age lets scrapes share the poll loop's readings)", Gauge)?;
    gauge(&mut m, &[] as &[(&str, &str); 0], snap.began.elapsed().as_secs_f64())?;

    let mut m =
        family(enc, "wireguard_collector_errors", "Errors reading each source since the collector started", Counter)?;
    for (source, n) in &snap.errors {
        counter(&mut m, &[("source", source.label())], *n)?;
    }

    let stats = || snap.devices.iter().flat_map(|d| d.program_stats.iter().map(move |s| (d, s)));
    if stats().any(|(_, s)| s.runs > 0) {
        let mut m = family(
            enc,
            "wireguard_collector_bpf_run_time_seconds",
            "Time the kernel spent in each of our programs (bpf stats; only while enabled with --bpf.stats)",
            Counter,
        )?;
        for (d, s) in stats() {
            counter(&mut m, &[("device", d.found.name.as_str()), ("program", s.program)], s.run_time.as_secs_f64())?;
        }
        let mut m = family(
            enc,
            "wireguard_collector_bpf_runs",
            "Runs of each of our programs (bpf stats; only while enabled with --bpf.stats)",
            Counter,
        )?;
        for (d, s) in stats() {
            counter(&mut m, &[("device", d.found.name.as_str()), ("program", s.program)], s.runs)?;
        }
    }
    Ok(())
}
