//! What the collector remembers between refreshes, per device: which peers it has seen (so
//! it can count peers added and removed, and endpoint changes), and the offsets that keep its
//! counters from going backwards.
//!
//! Counters restart from zero when a device is deleted and created again (WireGuard's own
//! and our programs' alike). Within one collector process a series never goes backwards:
//! when a raw value falls, the last one is added to an offset, as Prometheus' rate() would
//! have assumed. A removed peer's series disappear with its history; re-added, it starts from
//! zero. A device that disappears keeps its history, so a device created again continues.

use std::{collections::HashMap, net::SocketAddr};

use crate::wireguard::{Device, Key};

/// A counter that never goes backwards: raw values that fall count as a restart.
#[derive(Clone, Copy, Debug, Default)]
struct Monotonic {
    last: u64,
    offset: u64,
}

impl Monotonic {
    fn update(&mut self, raw: u64) -> u64 {
        if raw < self.last {
            self.offset += self.last;
        }
        self.last = raw;
        self.offset + raw
    }
}

/// Which counter of a peer or device (callers pick stable ids).
pub type CounterId = u32;

#[derive(Debug, Default)]
struct PeerHistory {
    endpoint: Option<SocketAddr>,
    endpoint_changes: u64,
    counters: HashMap<CounterId, Monotonic>,
}

#[derive(Debug, Default)]
struct DeviceHistory {
    /// Seen at least once: its first peers are not "added".
    known: bool,
    peers: HashMap<Key, PeerHistory>,
    added: u64,
    removed: u64,
    counters: HashMap<CounterId, Monotonic>,
}

/// The lifecycle of one device as of the last refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub added: u64,
    pub removed: u64,
    pub endpoint_changes: HashMap<Key, u64>,
}

#[derive(Debug, Default)]
pub struct History {
    devices: HashMap<String, DeviceHistory>,
}

impl History {
    /// Takes in a fresh reading of `dev`: counts peers added and removed and endpoints that
    /// changed since the last one.
    pub fn observe(&mut self, dev: &Device) -> Lifecycle {
        let h = self.devices.entry(dev.name.clone()).or_default();
        let first = !h.known;
        h.known = true;
        let mut seen = std::collections::HashSet::with_capacity(dev.peers.len());
        for p in &dev.peers {
            seen.insert(p.public_key);
            let ph = h.peers.entry(p.public_key).or_insert_with(|| {
                if !first {
                    h.added += 1;
                }
                PeerHistory { endpoint: p.endpoint, ..Default::default() }
            });
            if let (Some(old), Some(new)) = (ph.endpoint, p.endpoint) {
                if old != new {
                    ph.endpoint_changes += 1;
                }
            }
            if p.endpoint.is_some() {
                ph.endpoint = p.endpoint;
            }
        }
        let before = h.peers.len();
        h.peers.retain(|k, _| seen.contains(k));
        h.removed += (before - h.peers.len()) as u64;
        Lifecycle {
            added: h.added,
            removed: h.removed,
            endpoint_changes: h.peers.iter().map(|(k, p)| (*k, p.endpoint_changes)).collect(),
        }
    }

    /// The never-falling value of a peer's counter (the peer must have been observed).
    pub fn peer_counter(&mut self, device: &str, peer: &Key, id: CounterId, raw: u64) -> u64 {
        match self.devices.get_mut(device).and_then(|d| d.peers.get_mut(peer)) {
            Some(p) => p.counters.entry(id).or_default().update(raw),
            None => raw,
        }
    }

    /// The never-falling value of a device-level counter.
    pub fn device_counter(&mut self, device: &str, id: CounterId, raw: u64) -> u64 {
        self.devices.entry(device.to_string()).or_default().counters.entry(id).or_default().update(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::Peer;

    fn dev(peers: &[(u8, Option<&str>)]) -> Device {
        Device {
            name: "wg0".into(),
            peers: peers
                .iter()
                .map(|(k, e)| {
                    let mut p = Peer::new(Key([*k; 32]));
                    p.endpoint = e.map(|e| e.parse().unwrap());
                    p
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_peers_added_removed_and_endpoint_changes() {
        let mut h = History::default();
        // The first reading establishes what is there: nothing was added.
        let l = h.observe(&dev(&[(1, Some("10.0.0.1:1")), (2, None)]));
        assert_eq!((l.added, l.removed), (0, 0));
        let l = h.observe(&dev(&[(1, Some("10.0.0.1:1")), (2, Some("10.0.0.2:2")), (3, None)]));
        assert_eq!((l.added, l.removed), (1, 0));
        assert_eq!(l.endpoint_changes[&Key([2; 32])], 0, "learning an endpoint is no change");
        let l = h.observe(&dev(&[(1, Some("10.0.0.9:1")), (3, None)]));
        assert_eq!((l.added, l.removed), (1, 1));
        assert_eq!(l.endpoint_changes[&Key([1; 32])], 1);
        // Peer 2 comes back: added again, from a clean history.
        let l = h.observe(&dev(&[(1, Some("10.0.0.9:1")), (2, Some("10.0.0.7:2")), (3, None)]));
        assert_eq!((l.added, l.removed), (2, 1));
        assert_eq!(l.endpoint_changes[&Key([2; 32])], 0);
    }

    #[test]
    fn counters_never_go_backwards_and_removed_peers_start_fresh() {
        let mut h = History::default();
        let k = Key([1; 32]);
        h.observe(&dev(&[(1, None)]));
        assert_eq!(h.peer_counter("wg0", &k, 0, 100), 100);
        assert_eq!(h.peer_counter("wg0", &k, 0, 150), 150);
        // The device was created again: WireGuard counts from zero; we continue.
        assert_eq!(h.peer_counter("wg0", &k, 0, 20), 170);
        assert_eq!(h.peer_counter("wg0", &k, 0, 30), 180);
        // Removed and added again: a fresh series.
        h.observe(&dev(&[]));
        h.observe(&dev(&[(1, None)]));
        assert_eq!(h.peer_counter("wg0", &k, 0, 5), 5);
        assert_eq!(h.device_counter("wg0", 7, 9), 9);
        assert_eq!(h.device_counter("wg0", 7, 1), 10);
    }
}
