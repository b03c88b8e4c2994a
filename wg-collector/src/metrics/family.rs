//! What a metric family is, as data: its name, HELP, type and labels, how many series a peer
//! gives it, and how its samples are read from a page. Every family of the page is one such
//! value in a group's file; nothing else names a family.

use prometheus_client::{
    encoding::{
        DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NativeHistogram,
        NativeHistogramBuckets, NoLabelSet,
    },
    metrics::MetricType,
};

use super::lines::{Lines, TextLabels, TextValue};
use super::page::{DeviceLabels, ExportOptions, Page, PeerView, Row};
use crate::{
    histogram::Series,
    refresh::{DeviceSnapshot, Snapshot},
    wireguard::Peer,
};

/// The Prometheus type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Gauge,
    Counter,
    Histogram,
}

impl Type {
    pub fn label(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
            Self::Histogram => "histogram",
        }
    }

    fn metric_type(self) -> MetricType {
        match self {
            Self::Gauge => MetricType::Gauge,
            Self::Counter => MetricType::Counter,
            Self::Histogram => MetricType::Histogram,
        }
    }
}

/// One metric family.
pub struct Family {
    /// The name; prometheus-client appends `_total` to counters.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Type,
    /// The labels of its samples, in order (histograms add `le`).
    pub labels: &'static [&'static str],
    /// Series one peer adds to it (per-peer families only): what `--metrics.max-series`
    /// budgets, for the families `shown` (the budget asks it first, so this need not).
    pub per_peer: Option<fn(&PeerView) -> usize>,
    /// Whether the page has it at all (most always do), by the options and the reading.
    pub shown: fn(&ExportOptions, &Snapshot) -> bool,
    /// Writes its samples.
    pub samples: fn(&Page, &mut Samples) -> std::fmt::Result,
}

impl Family {
    fn is_shown(&self, page: &Page) -> bool {
        (self.shown)(&page.opts, &page.snap)
    }

    /// The name as the page shows it.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Type::Counter => format!("{}_total", self.name),
            _ => self.name.to_string(),
        }
    }

    /// Its descriptor and samples; `native`: histograms with their native buckets too.
    pub fn encode(&self, page: &Page, enc: &mut DescriptorEncoder, native: bool) -> std::fmt::Result {
        if !self.is_shown(page) {
            return Ok(());
        }
        let m = enc.encode_descriptor(self.name, self.help, None, self.kind.metric_type())?;
        (self.samples)(page, &mut Samples { to: To::Encoder(m), native })
    }

    /// Whether a text page gets its samples from [`Family::write_lines`] (counters and
    /// gauges) rather than from prometheus-client (histograms).
    pub fn has_lines(&self) -> bool {
        self.kind != Type::Histogram
    }

    /// Its descriptor alone (a text page then takes its samples from `write_lines`).
    pub fn describe(&self, page: &Page, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.is_shown(page) {
            enc.encode_descriptor(self.name, self.help, None, self.kind.metric_type())?;
        }
        Ok(())
    }

    /// Its samples in the text formats, appended to `out` (see lines.rs).
    pub fn write_lines(&self, page: &Page, out: &mut String) -> std::fmt::Result {
        if !self.is_shown(page) {
            return Ok(());
        }
        (self.samples)(page, &mut Samples { to: To::Lines(Lines::new(out, self.exposed_name())), native: false })
    }
}

/// `shown` for the families every page has.
pub fn always(_: &ExportOptions, _: &Snapshot) -> bool {
    true
}

/// `per_peer` for a family with one series per peer.
pub fn one_per_peer(_: &PeerView) -> usize {
    1
}

/// `shown` for the families only the underlay's programs measure (not with `--underlay
/// none`): absent rather than zeros that would read as "nothing lost".
pub fn on_the_underlay(opts: &ExportOptions, _: &Snapshot) -> bool {
    opts.underlay
}

/// Families that belong together, one file each (device, peer, traffic, ...); the page
/// shows the groups in order, each encoded on a thread of its own.
pub struct Group {
    pub name: &'static str,
    pub families: &'static [Family],
}

/// Writes one family's samples.
pub struct Samples<'a> {
    to: To<'a>,
    /// Histograms carry native buckets (the protobuf format) beside the classic ones.
    native: bool,
}

/// Where samples go: prometheus-client's encoder, or a text page's lines.
enum To<'a> {
    Encoder(MetricEncoder<'a>),
    Lines(Lines<'a>),
}

/// A label set either way.
pub trait Labels: EncodeLabelSet + TextLabels {}
impl<T: EncodeLabelSet + TextLabels> Labels for T {}

impl Samples<'_> {
    pub fn counter<V: EncodeCounterValue + TextValue>(&mut self, labels: &impl Labels, v: V) -> std::fmt::Result {
        match &mut self.to {
            To::Encoder(enc) => enc.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None),
            To::Lines(lines) => {
                lines.sample(labels, &v);
                Ok(())
            }
        }
    }

    pub fn gauge<V: EncodeGaugeValue + TextValue>(&mut self, labels: &impl Labels, v: V) -> std::fmt::Result {
        match &mut self.to {
            To::Encoder(enc) => enc.encode_family(labels)?.encode_gauge(&v),
            To::Lines(lines) => {
                lines.sample(labels, &v);
                Ok(())
            }
        }
    }

    /// One gauge per device, labelled with it.
    pub fn device_gauges(&mut self, page: &Page, value: impl Fn(&DeviceSnapshot) -> i64) -> std::fmt::Result {
        for d in &page.snap.devices {
            self.gauge(&DeviceLabels::of(&d.found), value(d))?;
        }
        Ok(())
    }

    /// One counter per device, labelled with it.
    pub fn device_counters(&mut self, page: &Page, value: impl Fn(&DeviceSnapshot) -> u64) -> std::fmt::Result {
        for d in &page.snap.devices {
            self.counter(&DeviceLabels::of(&d.found), value(d))?;
        }
        Ok(())
    }

    /// One counter per peer on the page, labelled with its device and key.
    pub fn peer_counters(&mut self, page: &Page, value: impl Fn(&Peer, &Row) -> u64) -> std::fmt::Result {
        for (p, row, labels) in page.peers() {
            self.counter(&labels, value(p, row))?;
        }
        Ok(())
    }

    /// A latency histogram: classic buckets folded from the kernel's (`--latency.buckets`),
    /// and in protobuf the kernel's buckets themselves at `--latency.schema`.
    pub fn histogram(&mut self, labels: &impl EncodeLabelSet, s: &Series, page: &Page) -> std::fmt::Result {
        // Histogram families have no lines (Family::has_lines).
        let To::Encoder(enc) = &mut self.to else { return Err(std::fmt::Error) };
        let classic = s.exposition(&page.opts.buckets);
        let mut enc = enc.encode_family(labels)?;
        if !self.native {
            return enc.encode_histogram::<NoLabelSet>(s.sum_seconds(), s.count, &classic, None);
        }
        let n = s.native(page.opts.schema);
        let native = NativeHistogram {
            schema: n.schema,
            zero_threshold: n.zero_threshold,
            zero_count: n.zero_count,
            negative: NativeHistogramBuckets { spans: &[], deltas: &[] },
            positive: NativeHistogramBuckets { spans: &n.spans, deltas: &n.deltas },
            created: None,
        };
        enc.encode_histogram_with_native::<NoLabelSet>(s.sum_seconds(), s.count, &classic, None, native)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::page, ExportOptions, Format};

    /// The families [`on_the_underlay`] shows.
    const UNDERLAY: [&str; 14] = [
        "wireguard_messages",
        "wireguard_invalid_messages",
        "wireguard_peer_lost_messages",
        "wireguard_peer_reordered_messages",
        "wireguard_peer_duplicate_messages",
        "wireguard_collector_unchecked_messages",
        "wireguard_peer_handshake_rtt_seconds",
        "wireguard_device_handshake_rtt_seconds",
        "wireguard_peer_encap_delay_seconds",
        "wireguard_device_encap_delay_seconds",
        "wireguard_peer_decap_delay_seconds",
        "wireguard_device_decap_delay_seconds",
        "wireguard_collector_delay_fifo_resyncs",
        "wireguard_collector_delay_fifo_overflows",
    ];

    /// The family a line of a text page belongs to, if it is one of [`UNDERLAY`].
    fn underlay_family(line: &str) -> Option<&'static str> {
        let sample = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")).unwrap_or(line);
        let name = sample.split(['{', ' ']).next()?;
        UNDERLAY.into_iter().find(|f| {
            name.strip_prefix(f).is_some_and(|rest| ["", "_total", "_bucket", "_sum", "_count"].contains(&rest))
        })
    }

    /// `--underlay none`: the page leaves out exactly the families only the underlay's
    /// programs measure (each of them on the full page, where the fixture's reading has samples
    /// of most), and the rest is the same byte for byte.
    #[test]
    fn without_the_underlay_its_families_are_left_out_and_nothing_else() {
        let full = page(&ExportOptions::default(), Format::TEXT);
        let off = page(&ExportOptions { underlay: false, ..ExportOptions::default() }, Format::TEXT);
        for f in UNDERLAY {
            assert!(
                full.lines().any(|l| l.starts_with("# HELP") && underlay_family(l) == Some(f)),
                "{f} not on the page"
            );
        }
        let rest: String = full.lines().filter(|l| underlay_family(l).is_none()).map(|l| format!("{l}\n")).collect();
        assert!(off == rest, "the page without the underlay:\n{off}");
        // The series budget counts what the page shows: a budget of exactly the page's
        // per-peer series leaves no peer out.
        let per_peer = off.lines().filter(|l| !l.starts_with('#') && !l.starts_with("wireguard_device_info"));
        let budget = per_peer.filter(|l| l.contains("public_key=\"") && !l.contains("public_key=\"\"")).count();
        let opts = ExportOptions { underlay: false, max_series: budget, ..ExportOptions::default() };
        let trimmed = page(&opts, Format::TEXT);
        assert!(trimmed.lines().any(|l| l.starts_with("wireguard_collector_peers_omitted{") && l.ends_with(" 0")));
        assert!(!trimmed.lines().any(|l| l.starts_with("wireguard_collector_peers_omitted{") && !l.ends_with(" 0")));
    }
}
