//! `--metrics.max-series`: how many per-peer series a reading gives, summed from what each
//! family of the catalogue says one peer adds, and the trimming of peers past the limit.

use super::{
    page::{LatencySeries, PeerView},
    ExportOptions, GROUPS,
};
use crate::{
    refresh::{DeviceSnapshot, Snapshot},
    wireguard::{KeySet, Peer},
};

/// What one peer adds to each family the page shows (asked once per reading: `shown` may
/// look at the whole snapshot).
type PerPeer = Vec<fn(&PeerView) -> usize>;

fn per_peer_of_shown(snap: &Snapshot, opts: &ExportOptions) -> PerPeer {
    GROUPS.iter().flat_map(|g| g.families).filter(|f| (f.shown)(opts, snap)).filter_map(|f| f.per_peer).collect()
}

/// Series one peer brings to the page.
fn peer_series(
    counted: &PerPeer,
    device: &DeviceSnapshot,
    peer: &Peer,
    latency: &LatencySeries,
    opts: &ExportOptions,
) -> usize {
    let view = PeerView::new(device, peer, latency, opts);
    counted.iter().map(|n| n(&view)).sum()
}

/// Per-peer series the snapshot would give.
pub fn total(snap: &Snapshot, latency: &[LatencySeries], opts: &ExportOptions) -> usize {
    let counted = per_peer_of_shown(snap, opts);
    snap.devices
        .iter()
        .zip(latency)
        .map(|(d, l)| d.state.peers.iter().map(|p| peer_series(&counted, d, p, l, opts)).sum::<usize>())
        .sum()
}

/// Drops peers past the series limit from the snapshot; returns how many per device, and
/// which.
pub fn limit(snap: &mut Snapshot, latency: &[LatencySeries], opts: &ExportOptions) -> (Vec<(String, usize)>, KeySet) {
    let mut left_out = KeySet::default();
    if opts.max_series == 0 {
        return (Vec::new(), left_out);
    }
    let counted = per_peer_of_shown(snap, opts);
    let mut budget = opts.max_series;
    let mut omitted = Vec::new();
    for (d, l) in snap.devices.iter_mut().zip(latency) {
        let mut keep = Vec::with_capacity(d.state.peers.len());
        let mut dropped = 0;
        for p in &d.state.peers {
            let n = peer_series(&counted, d, p, l, opts);
            if n <= budget {
                budget -= n;
                keep.push(p.clone());
            } else {
                budget = 0;
                dropped += 1;
                left_out.insert(p.public_key);
            }
        }
        // The trimmed copy's own state; the refresh's stays whole.
        d.state = std::sync::Arc::new(crate::wireguard::Device { peers: keep, ..(*d.state).clone() });
        if dropped > 0 {
            omitted.push((d.found.key(), dropped));
        }
    }
    if !omitted.is_empty() {
        tracing::warn!(
            limit = opts.max_series,
            ?omitted,
            "series limit reached (--metrics.max-series): peers left out of this scrape"
        );
    }
    (omitted, left_out)
}
