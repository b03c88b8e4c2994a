//! The path from each peer to this host, passively: from the counters of the transport
//! messages the peer sends (wg_common::path), what the path lost, reordered and duplicated.
//! Receive direction only: what this host can see. Counted by the underlay's ingress program.

use wg_common::path::PathCounts;

use super::family::{on_the_underlay, Family, Group, Samples, Type};
use super::page::{DeviceLabels, Page};
use super::traffic::{measured, PEER};

pub const GROUP: Group = Group {
    name: "path",
    families: &[
        Family {
            name: "wireguard_peer_lost_messages",
            help: "Transport messages from the peer lost on the path: counters that left the 64-message window unseen, or were unseen when their session ended (eBPF, underlay ingress)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: on_the_underlay,
            samples: |page, s| per_peer(page, s, |p| p.lost),
        },
        Family {
            name: "wireguard_peer_reordered_messages",
            help: "Transport messages from the peer that arrived after a higher counter of their session (late beyond the window, or on the session before, included)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: on_the_underlay,
            samples: |page, s| per_peer(page, s, |p| p.reordered),
        },
        Family {
            name: "wireguard_peer_duplicate_messages",
            help: "Transport messages from the peer whose counter had already arrived in the window: duplicated on the path, or replayed",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: on_the_underlay,
            samples: |page, s| per_peer(page, s, |p| p.duplicate),
        },
        Family {
            name: "wireguard_collector_unchecked_messages",
            help: "Transport messages whose counter the programs could not check (another CPU held the session past the wait, or a GRO batch cut short); should stay 0",
            kind: Type::Counter,
            labels: &["device"],
            per_peer: None,
            shown: on_the_underlay,
            samples: unchecked,
        },
    ],
};

fn per_peer(page: &Page, s: &mut Samples, value: fn(&PathCounts) -> u64) -> std::fmt::Result {
    for (_, row, labels) in page.peers() {
        if let Some(c) = &row.counters {
            s.counter(&labels, value(&c.path))?;
        }
    }
    Ok(())
}

fn unchecked(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for d in &page.snap.devices {
        let Some(r) = d.reading.as_ref() else { continue };
        let n: u64 = r.counters.values().map(|c| c.path.unchecked).sum();
        s.counter(&DeviceLabels::of(&d.found), n)?;
    }
    Ok(())
}
