//! Latency, from the kernel's histograms: round trips through the tunnel, handshakes, and
//! the time packets spend inside this host's WireGuard, per peer (only peers with samples)
//! and per device (always); and the bookkeeping of the packets waiting for their answer.

use wg_common::latency::Kind;

use super::family::{always, on_the_underlay, Family, Group, Samples, Type};
use super::page::{DeviceLabels, Page, PeerView};
use crate::{bpf::Reading, histogram::Series, refresh::DeviceSnapshot};

/// The kinds one pair of histogram families (per peer, per device) shows, and the label
/// that tells them apart if there are several. Indexed by the families' const parameter.
const KINDS: [(&[Kind], Option<&str>); 4] =
    [(&Kind::RTT, Some("method")), (&Kind::HANDSHAKE, Some("role")), (&[Kind::Encap], None), (&[Kind::Decap], None)];
const RTT: usize = 0;
const HANDSHAKE: usize = 1;
const ENCAP: usize = 2;
const DECAP: usize = 3;

const DEVICE: &[&str] = &["device"];

pub const GROUP: Group = Group {
    name: "latency",
    families: &[
        Family {
            name: "wireguard_peer_latency_seconds",
            help: "Round trip through the tunnel to the peer, per packet, measured by eBPF on the WireGuard interface: method tcp_ts (a TCP timestamp echoed), tcp_syn (SYN answered by SYN-ACK), icmp (echo answered). Only peers with samples",
            kind: Type::Histogram,
            labels: &["device", "public_key", "method"],
            per_peer: Some(peer_series::<RTT>),
            shown: always,
            samples: peer_histograms::<RTT>,
        },
        Family {
            name: "wireguard_device_latency_seconds",
            help: "Round trip through the tunnel, all peers of the device together, by method (see wireguard_peer_latency_seconds)",
            kind: Type::Histogram,
            labels: &["device", "method"],
            per_peer: None,
            shown: always,
            samples: device_histograms::<RTT>,
        },
        Family {
            name: "wireguard_peer_handshake_rtt_seconds",
            help: "Handshake round trip on the underlay, measured by eBPF: role initiator (our initiation → the peer's response), responder (our response → the peer's first data message). Only peers with samples",
            kind: Type::Histogram,
            labels: &["device", "public_key", "role"],
            per_peer: Some(peer_series::<HANDSHAKE>),
            shown: on_the_underlay,
            samples: peer_histograms::<HANDSHAKE>,
        },
        Family {
            name: "wireguard_device_handshake_rtt_seconds",
            help: "Handshake round trip, all peers of the device together (and handshakes with endpoints not yet known), by role",
            kind: Type::Histogram,
            labels: &["device", "role"],
            per_peer: None,
            shown: on_the_underlay,
            samples: device_histograms::<HANDSHAKE>,
        },
        Family {
            name: "wireguard_peer_encap_delay_seconds",
            help: "Time a packet to the peer spends inside this host's WireGuard: from the WireGuard interface's egress to its data message leaving the underlay. Only peers with samples",
            kind: Type::Histogram,
            labels: &["device", "public_key"],
            per_peer: Some(peer_series::<ENCAP>),
            shown: on_the_underlay,
            samples: peer_histograms::<ENCAP>,
        },
        Family {
            name: "wireguard_device_encap_delay_seconds",
            help: "Encapsulation delay, all peers of the device together",
            kind: Type::Histogram,
            labels: DEVICE,
            per_peer: None,
            shown: on_the_underlay,
            samples: device_histograms::<ENCAP>,
        },
        Family {
            name: "wireguard_peer_decap_delay_seconds",
            help: "Time a packet from the peer spends inside this host's WireGuard: from its data message arriving on the underlay to the plaintext arriving on the WireGuard interface. Only peers with samples",
            kind: Type::Histogram,
            labels: &["device", "public_key"],
            per_peer: Some(peer_series::<DECAP>),
            shown: on_the_underlay,
            samples: peer_histograms::<DECAP>,
        },
        Family {
            name: "wireguard_device_decap_delay_seconds",
            help: "Decapsulation delay, all peers of the device together",
            kind: Type::Histogram,
            labels: DEVICE,
            per_peer: None,
            shown: on_the_underlay,
            samples: device_histograms::<DECAP>,
        },
        Family {
            name: "wireguard_collector_latency_pending",
            help: "Packets waiting for their answer to become a latency sample (places taken in the pending table)",
            kind: Type::Gauge,
            labels: DEVICE,
            per_peer: None,
            shown: always,
            samples: |page, s| each_measuring(page, |d, r| s.gauge(&DeviceLabels::of(&d.found), r.pending as i64)),
        },
        Family {
            name: "wireguard_collector_latency_pending_capacity",
            help: "Places in the pending table: packets that may wait for their answer at once (--latency.max-pending)",
            kind: Type::Gauge,
            labels: DEVICE,
            per_peer: None,
            shown: always,
            samples: |page, s| {
                each_measuring(page, |d, r| s.gauge(&DeviceLabels::of(&d.found), r.latency_stats.capacity as i64))
            },
        },
        Family {
            name: "wireguard_collector_latency_pending_evictions",
            help: "Packets that gave up waiting for their answer: expired (older than --latency.pending-ttl, removed by the collector) or displaced (a newer packet took its place in the pending table, which a hash of the flow picks)",
            kind: Type::Counter,
            labels: &["device", "reason"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                each_measuring(page, |d, r| {
                    let st = &r.latency_stats;
                    s.counter(&(DeviceLabels::of(&d.found), [("reason", "expired")]), st.expired)?;
                    s.counter(&(DeviceLabels::of(&d.found), [("reason", "displaced")]), st.displaced)
                })
            },
        },
        Family {
            name: "wireguard_collector_delay_fifo_resyncs",
            help: "Encap/decap FIFO entries given up: the packet waited over 0.5 s or its size could not be the message's (WireGuard dropped it inside)",
            kind: Type::Counter,
            labels: DEVICE,
            per_peer: None,
            shown: on_the_underlay,
            samples: |page, s| each_measuring(page, |d, r| s.counter(&DeviceLabels::of(&d.found), r.latency_stats.fifo_resync)),
        },
        Family {
            name: "wireguard_collector_delay_fifo_overflows",
            help: "Encap/decap FIFO entries pushed out because more than 7 packets (or GSO batches) of one peer were inside WireGuard at once (their packets get no sample)",
            kind: Type::Counter,
            labels: DEVICE,
            per_peer: None,
            shown: on_the_underlay,
            samples: |page, s| {
                each_measuring(page, |d, r| s.counter(&DeviceLabels::of(&d.found), r.latency_stats.fifo_overflow))
            },
        },
        Family {
            name: "wireguard_collector_latency_samples_dropped",
            help: "Latency samples lost because the histogram map was full (--latency.max-hist-entries)",
            kind: Type::Counter,
            labels: DEVICE,
            per_peer: None,
            shown: always,
            samples: |page, s| each_measuring(page, |d, r| s.counter(&DeviceLabels::of(&d.found), r.latency_stats.hist_full)),
        },
    ],
};

/// The label set of one histogram: `base`, then the kind's label if the family has one.
fn labels<const K: usize>(base: Vec<(&'static str, String)>, kind: Kind) -> Vec<(&'static str, String)> {
    let mut labels = base;
    labels.extend(KINDS[K].1.map(|l| (l, kind.label().to_string())));
    labels
}

/// Series one peer gives family K: a histogram per kind it has samples of.
fn peer_series<const K: usize>(v: &PeerView) -> usize {
    let kinds = KINDS[K].0.iter().filter(|k| v.has_kind(**k as u16)).count();
    kinds * v.histogram_series()
}

fn peer_histograms<const K: usize>(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for (d, series) in page.devices() {
        for ((peer, kind), h) in series {
            let (Some(peer), Some(kind)) = (peer, Kind::from_u16(*kind)) else { continue };
            if !KINDS[K].0.contains(&kind) || page.left_out.contains(peer) {
                continue;
            }
            let mut base = DeviceLabels::of(&d.found).pairs();
            base.push(("public_key", peer.to_base64()));
            if page.opts.peer_name_label {
                base.push(("name", d.names.get(peer).cloned().unwrap_or_default()));
            }
            s.histogram(&labels::<K>(base, kind), h, page)?;
        }
    }
    Ok(())
}

/// The device's histograms always exist, empty or not, where the programs measure.
fn device_histograms<const K: usize>(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for (d, series) in page.devices() {
        if d.reading.is_none() {
            continue;
        }
        for kind in KINDS[K].0 {
            let mut total = Series::default();
            for ((_, k), h) in series {
                if *k == *kind as u16 {
                    total.merge(h);
                }
            }
            s.histogram(&labels::<K>(DeviceLabels::of(&d.found).pairs(), *kind), &total, page)?;
        }
    }
    Ok(())
}

/// Calls `f` for every device whose programs measure latency.
fn each_measuring(page: &Page, mut f: impl FnMut(&DeviceSnapshot, &Reading) -> std::fmt::Result) -> std::fmt::Result {
    for d in &page.snap.devices {
        if let Some(r) = &d.reading {
            f(d, r)?;
        }
    }
    Ok(())
}
