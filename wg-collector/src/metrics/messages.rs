//! WireGuard's messages on the underlay, counted by the eBPF programs: by peer, direction
//! and type, and what reached the port that was no message at all.

use wg_common::{
    protocol::{Invalid, MessageType, MESSAGE_TYPES},
    DIRECTIONS, DIR_RX, DIR_TX,
};

use super::family::{on_the_underlay, Family, Group, Samples, Type};
use super::page::{DeviceLabels, Page, PeerLabels};

pub const GROUP: Group = Group {
    name: "messages",
    families: &[
        Family {
            name: "wireguard_messages",
            help: "WireGuard messages on the underlay by direction and type (handshake_initiation, handshake_response, cookie_reply, data, keepalive), per peer where the endpoint or the handshake index tells it, else with an empty public_key",
            kind: Type::Counter,
            labels: &["device", "public_key", "direction", "type"],
            per_peer: Some(|v| {
                if v.messaged {
                    DIRECTIONS * MESSAGE_TYPES
                } else {
                    0
                }
            }),
            shown: on_the_underlay,
            samples: messages,
        },
        Family {
            name: "wireguard_invalid_messages",
            help: "UDP datagrams to the WireGuard port that are no valid message, by reason: too_short, bad_type, bad_size, unknown_index (a response, cookie or data naming an index never given out, from an unknown endpoint)",
            kind: Type::Counter,
            labels: &["device", "reason"],
            per_peer: None,
            shown: on_the_underlay,
            samples: |page, s| {
                for d in &page.snap.devices {
                    let Some(inv) = d.reading.as_ref().map(|r| &r.invalid) else { continue };
                    for r in Invalid::ALL {
                        s.counter(&(DeviceLabels::of(&d.found), [("reason", r.label())]), inv[r as usize])?;
                    }
                }
                Ok(())
            },
        },
    ],
};

fn messages(page: &Page, s: &mut Samples) -> std::fmt::Result {
    let named = page.opts.peer_name_label;
    for (i, (d, rows)) in page.snap.devices.iter().zip(&page.rows).enumerate() {
        let Some(r) = &d.reading else { continue };
        let device = DeviceLabels::of(&d.found);
        let peers = d
            .state
            .peers
            .iter()
            .zip(rows)
            .filter_map(|(p, row)| Some((page.labels(i, row), r.messages.get(&p.public_key)?)));
        // The device's messages no peer was found for: an empty public_key (and name).
        let unknown = PeerLabels { device, key: "", name: named.then_some(""), text: None };
        for (labels, counts) in peers.chain(std::iter::once((unknown, &r.device_messages))) {
            for (dir, dname) in [(DIR_RX, "receive"), (DIR_TX, "transmit")] {
                for t in MessageType::ALL {
                    s.counter(&(labels, [("direction", dname), ("type", t.label())]), counts.counts[dir][t as usize])?;
                }
            }
        }
    }
    Ok(())
}
