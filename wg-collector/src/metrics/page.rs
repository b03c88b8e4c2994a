//! One scrape's page: the reading it shows (trimmed to `--metrics.max-series`), each peer's
//! row, made once for every per-peer family, and the latency series, folded once for the
//! histogram families.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use wg_common::PeerCounters;

use super::budget;
use crate::{
    histogram::{Buckets, Schema, Series},
    http::requests::EndpointCounts,
    refresh::{DeviceLink, DeviceSnapshot, Snapshot},
    wireguard::{discovery::Found, Key, KeySet, Peer},
};

/// What the page shows, beyond what there is.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Classic `le` buckets of latency histograms (every format).
    pub buckets: Buckets,
    /// The native schema of latency histograms (the protobuf format).
    pub schema: Schema,
    /// Leave the endpoint label empty (`--redact endpoints`: it maps the network).
    pub redact_endpoints: bool,
    /// Leave out wireguard_peer_allowed_ips_info (`--redact allowed-ips`).
    pub redact_allowed_ips: bool,
    /// At most this many per-peer series (0 = no limit): peers past it are left out whole,
    /// with a warning and wireguard_collector_peers_omitted.
    pub max_series: usize,
    /// A `name` label on every per-peer series (`--metrics.peer-name-label`).
    pub peer_name_label: bool,
    /// wireguard_peer_up: 1 while the last handshake is younger than this (`--peer.up-after`).
    pub up_after: Duration,
    /// prometheus_wireguard_exporter's families (`--compat`).
    pub compat: super::Compat,
    /// Programs on the underlay (not `--underlay none`): the families only they measure.
    pub underlay: bool,
}

/// `--metrics.max-series`' default.
pub const DEFAULT_MAX_SERIES: usize = 2_000_000;

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            buckets: Buckets::default(),
            schema: Schema::default(),
            redact_endpoints: false,
            redact_allowed_ips: false,
            max_series: DEFAULT_MAX_SERIES,
            peer_name_label: false,
            up_after: Duration::from_secs(180),
            compat: super::Compat::default(),
            underlay: true,
        }
    }
}

/// A device's latency series: (peer, kind) → series; peer `None` = samples whose peer was
/// not known.
pub type LatencySeries = BTreeMap<(Option<Key>, u16), Series>;

pub struct Page {
    pub snap: Arc<Snapshot>,
    /// Peers left out per device (by its key: name, and namespace if not the own).
    pub omitted: Vec<(String, usize)>,
    /// The keys of the peers left out (their latency samples stay in the device's totals).
    pub left_out: KeySet,
    /// Per device, per peer, in the reading's order.
    pub rows: Vec<Vec<Row>>,
    /// Per device.
    pub latency: Vec<LatencySeries>,
    pub opts: ExportOptions,
    /// The metrics endpoint's connections and requests as of this scrape.
    pub endpoint: EndpointCounts,
    /// Encoded in a text format: per-peer label sets are written as rendered in their rows
    /// (set by `for_text`).
    pub text: bool,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Page")
    }
}

impl Page {
    pub fn new(snap: Arc<Snapshot>, opts: &ExportOptions, endpoint: EndpointCounts) -> Self {
        let latency: Vec<LatencySeries> = snap.devices.iter().map(latency_series).collect();
        let (snap, omitted, left_out) =
            if opts.max_series == 0 || budget::total(&snap, &latency, opts) <= opts.max_series {
                (snap, Vec::new(), KeySet::default())
            } else {
                // Over the limit (rare): a copy of this scrape's snapshot, trimmed.
                let mut trimmed = Snapshot::clone(&snap);
                let (omitted, left_out) = budget::limit(&mut trimmed, &latency, opts);
                (Arc::new(trimmed), omitted, left_out)
            };
        let rows = snap.devices.iter().map(|d| d.state.peers.iter().map(|p| Row::of(d, p)).collect()).collect();
        Self { snap, omitted, left_out, rows, latency, opts: opts.clone(), endpoint, text: false }
    }

    /// For a text format: each peer's labels rendered once (Row::text).
    pub fn for_text(&mut self) {
        self.text = true;
        for (d, rows) in self.snap.devices.iter().zip(&mut self.rows) {
            for row in rows {
                let name = self.opts.peer_name_label.then(|| row.name.as_deref().unwrap_or(""));
                let labels = PeerLabels { device: DeviceLabels::of(&d.found), key: &row.key, name, text: None };
                row.text = super::lines::render(&labels);
            }
        }
    }

    /// Every peer with its row and the labels all per-peer families start with.
    pub fn peers(&self) -> impl Iterator<Item = (&Peer, &Row, PeerLabels<'_>)> {
        self.snap.devices.iter().zip(&self.rows).enumerate().flat_map(move |(i, (d, rows))| {
            d.state.peers.iter().zip(rows).map(move |(p, row)| (p, row, self.labels(i, row)))
        })
    }

    /// The labels all series of a peer of device `i` start with.
    pub fn labels<'a>(&'a self, i: usize, row: &'a Row) -> PeerLabels<'a> {
        PeerLabels {
            device: DeviceLabels::of(&self.snap.devices[i].found),
            key: &row.key,
            name: self.opts.peer_name_label.then(|| row.name.as_deref().unwrap_or("")),
            text: self.text.then_some(row.text.as_str()),
        }
    }

    /// Every device with its latency series.
    pub fn devices(&self) -> impl Iterator<Item = (&DeviceSnapshot, &LatencySeries)> {
        self.snap.devices.iter().zip(&self.latency)
    }
}

/// A peer as the per-peer families show it (looked up by key once per scrape: at 10k peers
/// a lookup per family was a tenth of the page's time).
pub struct Row {
    pub key: String,
    pub name: Option<String>,
    pub counters: Option<PeerCounters>,
    pub endpoint_changes: u64,
    /// Its labels as the text formats write them (Page::for_text).
    pub text: String,
}

impl Row {
    fn of(d: &DeviceSnapshot, p: &Peer) -> Self {
        Row {
            key: p.public_key.to_base64(),
            name: d.names.get(&p.public_key).cloned(),
            counters: d.reading.as_ref().and_then(|r| r.counters.get(&p.public_key)).copied(),
            endpoint_changes: d.lifecycle.endpoint_changes.get(&p.public_key).copied().unwrap_or(0),
            text: String::new(),
        }
    }
}

/// The labels every per-device series starts with: device, and netns for a device in
/// another network namespace than the collector's (`--netns`; none for its own, so its
/// series are the same with and without the flag). A family adds its own after them:
/// `(labels, [("reason", r)])`.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLabels<'a> {
    pub device: &'a str,
    pub netns: Option<&'a str>,
}

impl<'a> DeviceLabels<'a> {
    pub fn of(f: &'a Found) -> Self {
        DeviceLabels { device: &f.name, netns: f.netns.as_deref() }
    }

    pub fn link(l: &'a DeviceLink) -> Self {
        DeviceLabels { device: &l.name, netns: l.netns.as_deref() }
    }

    /// As owned pairs, for label sets built as a list.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("device", self.device.to_string())];
        v.extend(self.netns.map(|n| ("netns", n.to_string())));
        v
    }
}

impl EncodeLabelSet for DeviceLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        [("device", self.device)].encode(encoder)?;
        match self.netns {
            Some(ns) => [("netns", ns)].encode(encoder),
            None => Ok(()),
        }
    }
}

/// The labels every per-peer series starts with: the device's, public_key, and name with
/// `--metrics.peer-name-label`. A family adds its own after them: `(labels, [("method", m)])`.
#[derive(Clone, Copy, Debug)]
pub struct PeerLabels<'a> {
    pub device: DeviceLabels<'a>,
    /// The public key in base64 (empty for what no peer was found for).
    pub key: &'a str,
    pub name: Option<&'a str>,
    /// In a text format, these labels as written, rendered once per page and peer (Row::text):
    /// ~15 series a peer then write them in one piece. Set by Page::labels only: a label set
    /// with other values is a new one, not this one changed.
    pub text: Option<&'a str>,
}

impl EncodeLabelSet for PeerLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        self.device.encode(encoder)?;
        [("public_key", self.key)].encode(encoder)?;
        match self.name {
            Some(name) => [("name", name)].encode(encoder),
            None => Ok(()),
        }
    }
}

/// A peer as the series budget sees it: what the families ask of it, looked up once (a
/// lookup per family and peer was a tenth of a 10k-peer page's time on the host).
pub struct PeerView<'a> {
    pub peer: &'a Peer,
    pub opts: &'a ExportOptions,
    /// The programs count it (it has a slot).
    pub counted: bool,
    /// Its underlay messages are counted.
    pub messaged: bool,
    /// The latency kinds it has samples of (see has_kind).
    pub kinds: u64,
}

impl<'a> PeerView<'a> {
    pub fn new(device: &DeviceSnapshot, peer: &'a Peer, latency: &LatencySeries, opts: &'a ExportOptions) -> Self {
        let reading = device.reading.as_ref();
        let key = Some(peer.public_key);
        let kinds = latency.range((key, 0)..=(key, u16::MAX)).fold(0, |a, ((_, k), _)| a | kind_bit(*k));
        PeerView {
            peer,
            opts,
            counted: reading.is_some_and(|r| r.counters.contains_key(&peer.public_key)),
            messaged: reading.is_some_and(|r| r.messages.contains_key(&peer.public_key)),
            kinds,
        }
    }

    /// Whether it has samples of latency kind `kind`.
    pub fn has_kind(&self, kind: u16) -> bool {
        self.kinds & kind_bit(kind) != 0
    }

    /// Series of one histogram of this page.
    pub fn histogram_series(&self) -> usize {
        match &self.opts.buckets {
            Buckets::Classic(v) => v.len() + 3,
            Buckets::Full => 400,
        }
    }
}

/// A latency kind's bit in PeerView::kinds (none for a kind no program records).
fn kind_bit(kind: u16) -> u64 {
    1u64.checked_shl(kind.into()).unwrap_or(0)
}

fn latency_series(d: &DeviceSnapshot) -> LatencySeries {
    let mut m = LatencySeries::new();
    for (peer, k, v) in d.reading.iter().flat_map(|r| &r.latency) {
        m.entry((*peer, k.kind)).or_default().add(k.bucket, v.count, v.sum_ns);
    }
    m
}
