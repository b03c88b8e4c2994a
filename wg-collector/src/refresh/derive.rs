//! The last step of a refresh: what follows from a device's reading and the collector's
//! memory of earlier ones: peers added and removed, configuration changes,
//! counters that never go backwards, live sessions, address pools and names.

use std::{sync::Arc, time::Duration};

use ipnet::IpNet;
use wg_common::{protocol::MessageType, Unattributed};

use super::snapshot::DeviceSnapshot;
use crate::{
    bpf::Reading,
    history::{DeviceCounter, History, PeerCounter},
    interfaces,
    names::Names,
    pool,
    wireguard::{discovery::Found, Device},
};

/// A handshake younger than this means a live session (REJECT_AFTER_TIME).
const ACTIVE_WITHIN: Duration = Duration::from_secs(180);

/// WireGuard's state of a device as a refresh has it.
pub enum State {
    /// Read now: its counters are WireGuard's own.
    Fresh(Device),
    /// The last state derived, standing in while WireGuard cannot be read: its counters are
    /// never-falling already. Shared with the snapshot that showed it (no copy).
    Stale(Arc<Device>),
}

/// The device's snapshot; `now` is the time since the Unix epoch, `read_at` when the state was
/// read (earlier while WireGuard cannot be read).
pub fn derive(
    history: &mut History,
    names: &Names,
    found: Found,
    state: State,
    mut reading: Option<Reading>,
    now: Duration,
    read_at: Duration,
) -> DeviceSnapshot {
    let (state, lifecycle) = match state {
        State::Fresh(mut state) => {
            let lifecycle = history.observe(&state);
            never_falling(history, Some(&mut state), reading.as_mut(), &found.name);
            (Arc::new(state), lifecycle)
        }
        State::Stale(state) => {
            never_falling(history, None, reading.as_mut(), &found.name);
            (state, history.lifecycle(&found.name))
        }
    };
    let active =
        state.peers.iter().filter(|p| p.last_handshake.is_some_and(|t| now.saturating_sub(t) < ACTIVE_WITHIN)).count();
    let used: Vec<IpNet> = state.peers.iter().flat_map(|p| p.allowed_ips.iter().copied()).collect();
    let pools = pool::pools(&interfaces::addresses_of(&found.name), &used);
    let names =
        state.peers.iter().filter_map(|p| Some((p.public_key, names.get(&p.public_key)?.to_string()))).collect();
    DeviceSnapshot { found, state, reading, lifecycle, active, pools, names, read_at, read_errors: Vec::new() }
}

/// Rewrites the counters as values that never go backwards within this process (see
/// history.rs): WireGuard's, when `state` was read now, and the programs'. The device was
/// observed just before.
fn never_falling(h: &mut History, state: Option<&mut Device>, mut reading: Option<&mut Reading>, dev: &str) {
    if let Some(mut peers) = h.peers_of(dev) {
        if let Some(state) = state {
            for p in &mut state.peers {
                let Some(mut c) = peers.get(&p.public_key) else { continue };
                p.rx_bytes = c.update(PeerCounter::ReceiveBytes, p.rx_bytes);
                p.tx_bytes = c.update(PeerCounter::TransmitBytes, p.tx_bytes);
            }
        }
        if let Some(r) = reading.as_deref_mut() {
            for (key, pc) in r.counters.iter_mut() {
                let Some(mut c) = peers.get(key) else { continue };
                for (d, dc) in pc.dir.iter_mut().enumerate() {
                    dc.packets = c.update(PeerCounter::Packets(d), dc.packets);
                    dc.bytes = c.update(PeerCounter::PayloadBytes(d), dc.bytes);
                }
                let p = &mut pc.path;
                for (i, v) in
                    [&mut p.lost, &mut p.reordered, &mut p.duplicate, &mut p.unchecked].into_iter().enumerate()
                {
                    *v = c.update(PeerCounter::Path(i), *v);
                }
            }
            for (key, m) in r.messages.iter_mut() {
                let Some(mut c) = peers.get(key) else { continue };
                for (d, row) in m.counts.iter_mut().enumerate() {
                    for t in MessageType::ALL {
                        row[t as usize] = c.update(PeerCounter::Messages(d, t), row[t as usize]);
                    }
                }
            }
        }
    }
    let Some(r) = reading else { return };
    for (d, row) in r.unattributed.iter_mut().enumerate() {
        for reason in Unattributed::ALL {
            let cell = &mut row[reason as usize];
            cell.packets = h.device_counter(dev, DeviceCounter::Unattributed(d, reason), cell.packets);
        }
    }
    for reason in wg_common::protocol::Invalid::ALL {
        let n = &mut r.invalid[reason as usize];
        *n = h.device_counter(dev, DeviceCounter::Invalid(reason), *n);
    }
    for (d, row) in r.device_messages.counts.iter_mut().enumerate() {
        for t in MessageType::ALL {
            row[t as usize] = h.device_counter(dev, DeviceCounter::Messages(d, t), row[t as usize]);
        }
    }
}
