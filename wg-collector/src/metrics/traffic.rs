//! Plaintext traffic on the WireGuard interface, counted per peer by the eBPF programs at
//! line rate, and what matched no peer.

use wg_common::{Unattributed, DIR_RX, DIR_TX};

use super::family::{always, Family, Group, Samples, Type};
use super::page::{DeviceLabels, Page, PeerView};

pub(super) const PEER: &[&str] = &["device", "public_key"];

/// A series per peer the programs count.
pub(super) fn measured(v: &PeerView) -> usize {
    v.counted as usize
}

pub const GROUP: Group = Group {
    name: "traffic",
    families: &[
        Family {
            name: "wireguard_peer_receive_packets",
            help: "Plaintext packets received from the peer on the WireGuard interface, counted by eBPF (GSO super-packets as their segments)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: always,
            samples: |page, s| per_peer(page, s, |c| c.dir[DIR_RX].packets),
        },
        Family {
            name: "wireguard_peer_transmit_packets",
            help: "Plaintext packets sent to the peer on the WireGuard interface, counted by eBPF (GSO super-packets as their segments)",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: always,
            samples: |page, s| per_peer(page, s, |c| c.dir[DIR_TX].packets),
        },
        Family {
            name: "wireguard_peer_receive_payload_bytes",
            help: "Plaintext bytes (IP packets) received from the peer on the WireGuard interface, counted by eBPF",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: always,
            samples: |page, s| per_peer(page, s, |c| c.dir[DIR_RX].bytes),
        },
        Family {
            name: "wireguard_peer_transmit_payload_bytes",
            help: "Plaintext bytes (IP packets) sent to the peer on the WireGuard interface, counted by eBPF",
            kind: Type::Counter,
            labels: PEER,
            per_peer: Some(measured),
            shown: always,
            samples: |page, s| per_peer(page, s, |c| c.dir[DIR_TX].bytes),
        },
        Family {
            name: "wireguard_unattributed_packets",
            help: "Packets on the WireGuard interface that matched no peer, by direction and reason (no_peer, not_ip, truncated); passed on, never dropped",
            kind: Type::Counter,
            labels: &["device", "direction", "reason"],
            per_peer: None,
            shown: always,
            samples: unattributed,
        },
    ],
};

fn per_peer(page: &Page, s: &mut Samples, value: fn(&wg_common::PeerCounters) -> u64) -> std::fmt::Result {
    for (_, row, labels) in page.peers() {
        if let Some(c) = &row.counters {
            s.counter(&labels, value(c))?;
        }
    }
    Ok(())
}

fn unattributed(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for d in &page.snap.devices {
        let Some(u) = d.reading.as_ref().map(|r| &r.unattributed) else { continue };
        for (dir, dname) in [(DIR_RX, "receive"), (DIR_TX, "transmit")] {
            for r in Unattributed::ALL {
                let labels = (DeviceLabels::of(&d.found), [("direction", dname), ("reason", r.label())]);
                s.counter(&labels, u[dir][r as usize].packets)?;
            }
        }
    }
    Ok(())
}
