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

use ipnet::IpNet;

use wg_common::{
    protocol::{Invalid, MessageType, MESSAGE_TYPES},
    Unattributed, DIRECTIONS,
};

use crate::wireguard::{Device, Key, KeyMap, KeySet, Peer};

/// What part of a device's configuration changed, as the `field` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigField {
    /// Seen as a new public key (the private key itself is never read out or logged).
    PrivateKey,
    ListenPort,
    Fwmark,
    /// A peer added or removed.
    Peers,
    /// A peer's allowed IPs.
    AllowedIps,
    /// A peer's endpoint set by configuration: changed while nothing came from the peer
    /// (roaming needs an authenticated packet from the new address, which WireGuard counts).
    Endpoint,
}

impl ConfigField {
    pub const ALL: [ConfigField; 6] =
        [Self::PrivateKey, Self::ListenPort, Self::Fwmark, Self::Peers, Self::AllowedIps, Self::Endpoint];
    pub fn label(self) -> &'static str {
        match self {
            Self::PrivateKey => "private_key",
            Self::ListenPort => "listen_port",
            Self::Fwmark => "fwmark",
            Self::Peers => "peers",
            Self::AllowedIps => "allowed_ips",
            Self::Endpoint => "endpoint",
        }
    }
}

/// One change seen by a refresh: which field, of which peer (for peer fields), and the new
/// value as it may be logged (public keys, ports, prefixes, endpoints; never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub field: ConfigField,
    pub peer: Option<Key>,
    pub value: String,
}

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

/// A counter of one peer that never goes backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCounter {
    /// WireGuard's own byte counts.
    ReceiveBytes,
    TransmitBytes,
    /// Our plaintext packets and bytes, by direction (DIR_RX, DIR_TX).
    Packets(usize),
    PayloadBytes(usize),
    /// Underlay messages by direction and type.
    Messages(usize, MessageType),
    /// Received messages lost, reordered, duplicated, unchecked (wg_common::path), by place.
    Path(usize),
}

impl PeerCounter {
    /// How many there are: the size of a peer's array of them.
    pub const COUNT: usize = 2 + 2 * DIRECTIONS + DIRECTIONS * MESSAGE_TYPES + PATH_COUNTS;

    /// Its place in a peer's array.
    fn index(self) -> usize {
        match self {
            Self::ReceiveBytes => 0,
            Self::TransmitBytes => 1,
            Self::Packets(dir) => 2 + dir,
            Self::PayloadBytes(dir) => 2 + DIRECTIONS + dir,
            Self::Messages(dir, t) => 2 + 2 * DIRECTIONS + dir * MESSAGE_TYPES + t as usize,
            Self::Path(i) => 2 + 2 * DIRECTIONS + DIRECTIONS * MESSAGE_TYPES + i,
        }
    }
}

/// The counters of wg_common::path::PathCounts.
const PATH_COUNTS: usize = 4;

/// A counter of one device that never goes backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceCounter {
    /// Packets no peer could be given, by direction and reason.
    Unattributed(usize, Unattributed),
    Invalid(Invalid),
    /// The device's own underlay messages (peer unknown), by direction and type.
    Messages(usize, MessageType),
}

#[derive(Debug, Default)]
struct PeerHistory {
    endpoint: Option<SocketAddr>,
    endpoint_changes: u64,
    allowed_ips: Vec<IpNet>,
    /// WireGuard's received bytes at the last reading (did anything come from the peer?).
    rx_bytes: u64,
    /// A fixed array, not a map, as every refresh updates each of them for every peer.
    counters: [Monotonic; PeerCounter::COUNT],
}

#[derive(Debug, Default)]
struct DeviceHistory {
    /// Seen at least once: its first peers are not "added".
    known: bool,
    peers: KeyMap<PeerHistory>,
    added: u64,
    removed: u64,
    /// The device's own settings at the last reading: public key, listen port, fwmark.
    settings: (Option<Key>, u16, u32),
    config_changes: HashMap<ConfigField, u64>,
    counters: HashMap<DeviceCounter, Monotonic>,
}

impl DeviceHistory {
    fn lifecycle(&self, changed: Vec<Change>) -> Lifecycle {
        Lifecycle {
            added: self.added,
            removed: self.removed,
            endpoint_changes: self.peers.iter().map(|(k, p)| (*k, p.endpoint_changes)).collect(),
            config_changes: ConfigField::ALL
                .iter()
                .map(|f| (*f, self.config_changes.get(f).copied().unwrap_or(0)))
                .collect(),
            changed,
        }
    }

    /// Changes of the device's own settings since the last reading (none at the first).
    fn settings_changes(&mut self, dev: &Device, first: bool) -> Vec<Change> {
        let mut changed = Vec::new();
        let settings = (dev.public_key, dev.listen_port, dev.fwmark);
        if !first {
            if settings.0 != self.settings.0 {
                let value = settings.0.map(|k| format!("public key now {k}")).unwrap_or_else(|| "no key".into());
                changed.push(Change { field: ConfigField::PrivateKey, peer: None, value });
            }
            if settings.1 != self.settings.1 {
                let value = format!("{} → {}", self.settings.1, settings.1);
                changed.push(Change { field: ConfigField::ListenPort, peer: None, value });
            }
            if settings.2 != self.settings.2 {
                let value = format!("{:#x} → {:#x}", self.settings.2, settings.2);
                changed.push(Change { field: ConfigField::Fwmark, peer: None, value });
            }
        }
        self.settings = settings;
        changed
    }

    /// Takes in one peer of a reading: added, allowed IPs changed, endpoint moved.
    fn observe_peer(&mut self, p: &Peer, first: bool, changed: &mut Vec<Change>) {
        // Compared in order: copied and sorted only when WireGuard's order is not.
        let sorted;
        let allowed: &[IpNet] = if p.allowed_ips.is_sorted() {
            &p.allowed_ips
        } else {
            let mut v = p.allowed_ips.clone();
            v.sort();
            sorted = v;
            &sorted
        };
        let ph = self.peers.entry(p.public_key).or_insert_with(|| {
            if !first {
                self.added += 1;
                changed.push(Change { field: ConfigField::Peers, peer: Some(p.public_key), value: "added".into() });
            }
            PeerHistory {
                endpoint: p.endpoint,
                allowed_ips: allowed.to_vec(),
                rx_bytes: p.rx_bytes,
                ..Default::default()
            }
        });
        if ph.allowed_ips != allowed {
            let list: Vec<String> = allowed.iter().map(|n| n.to_string()).collect();
            changed.push(Change { field: ConfigField::AllowedIps, peer: Some(p.public_key), value: list.join(",") });
            ph.allowed_ips = allowed.to_vec();
        }
        if let (Some(old), Some(new)) = (ph.endpoint, p.endpoint) {
            if old != new {
                ph.endpoint_changes += 1;
                // Roaming needs an authenticated packet from the new address, which WireGuard
                // counts; a move while nothing came is configuration.
                if p.rx_bytes == ph.rx_bytes {
                    changed.push(Change {
                        field: ConfigField::Endpoint,
                        peer: Some(p.public_key),
                        value: new.to_string(),
                    });
                }
            }
        }
        if p.endpoint.is_some() {
            ph.endpoint = p.endpoint;
        }
        ph.rx_bytes = p.rx_bytes;
    }
}

/// The lifecycle of one device as of the last refresh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    pub added: u64,
    pub removed: u64,
    pub endpoint_changes: KeyMap<u64>,
    /// Configuration changes since start, every field (zero included).
    pub config_changes: Vec<(ConfigField, u64)>,
    /// What changed since the last refresh.
    pub changed: Vec<Change>,
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
        let mut changed = h.settings_changes(dev, first);
        let mut seen = KeySet::with_capacity_and_hasher(dev.peers.len(), Default::default());
        for p in &dev.peers {
            seen.insert(p.public_key);
            h.observe_peer(p, first, &mut changed);
        }
        let before = h.peers.len();
        h.peers.retain(|k, _| {
            if !seen.contains(k) {
                changed.push(Change { field: ConfigField::Peers, peer: Some(*k), value: "removed".into() });
            }
            seen.contains(k)
        });
        h.removed += (before - h.peers.len()) as u64;
        for c in &changed {
            *h.config_changes.entry(c.field).or_default() += 1;
        }
        h.lifecycle(changed)
    }

    /// The lifecycle of `dev` as of its last reading, nothing changed since (while WireGuard
    /// cannot be read and its last state stands in).
    pub fn lifecycle(&self, dev: &str) -> Lifecycle {
        self.devices.get(dev).map(|h| h.lifecycle(Vec::new())).unwrap_or_default()
    }

    /// The never-falling value of a peer's counter (the peer must have been observed).
    pub fn peer_counter(&mut self, device: &str, peer: &Key, c: PeerCounter, raw: u64) -> u64 {
        match self.peers_of(device).as_mut().and_then(|d| d.get(peer)) {
            Some(mut p) => p.update(c, raw),
            None => raw,
        }
    }

    /// The peers of one device, for looking up many peers' counters (the device once).
    pub fn peers_of(&mut self, device: &str) -> Option<DevicePeers<'_>> {
        self.devices.get_mut(device).map(|d| DevicePeers(&mut d.peers))
    }

    /// The never-falling value of a device-level counter.
    pub fn device_counter(&mut self, device: &str, c: DeviceCounter, raw: u64) -> u64 {
        self.devices.entry(device.to_string()).or_default().counters.entry(c).or_default().update(raw)
    }
}

/// The peers of one device (see [`History::peers_of`]).
pub struct DevicePeers<'a>(&'a mut KeyMap<PeerHistory>);

impl DevicePeers<'_> {
    /// A peer's never-falling counters (the peer must have been observed).
    pub fn get(&mut self, peer: &Key) -> Option<NeverFalling<'_>> {
        self.0.get_mut(peer).map(|p| NeverFalling(&mut p.counters))
    }
}

/// The never-falling counters of one peer (see [`DevicePeers::get`]).
pub struct NeverFalling<'a>(&'a mut [Monotonic; PeerCounter::COUNT]);

impl NeverFalling<'_> {
    /// The never-falling value of counter `c`.
    pub fn update(&mut self, c: PeerCounter, raw: u64) -> u64 {
        self.0[c.index()].update(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn counts_each_config_change_by_field_and_tells_roaming_from_configuration() {
        let mut h = History::default();
        let mut d = dev(&[(1, Some("10.0.0.1:1")), (2, None)]);
        d.listen_port = 51820;
        assert!(h.observe(&d).changed.is_empty(), "the first reading is no change");
        let count = |l: &Lifecycle, f: ConfigField| l.config_changes.iter().find(|(g, _)| *g == f).unwrap().1;

        d.listen_port = 51821;
        d.fwmark = 7;
        d.public_key = Some(Key([9; 32]));
        d.peers[1].allowed_ips = vec!["10.9.0.0/24".parse().unwrap()];
        let l = h.observe(&d);
        let fields: Vec<ConfigField> = l.changed.iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [ConfigField::PrivateKey, ConfigField::ListenPort, ConfigField::Fwmark, ConfigField::AllowedIps]
        );
        assert_eq!(l.changed[1].value, "51820 → 51821");
        assert_eq!(l.changed[3].peer, Some(Key([2; 32])));

        // Endpoint moved while the peer sent nothing: configuration. With bytes received: roaming.
        d.peers[0].endpoint = Some("10.0.0.5:1".parse().unwrap());
        let l = h.observe(&d);
        assert_eq!(
            l.changed,
            [Change { field: ConfigField::Endpoint, peer: Some(Key([1; 32])), value: "10.0.0.5:1".into() }]
        );
        d.peers[0].endpoint = Some("10.0.0.6:1".parse().unwrap());
        d.peers[0].rx_bytes = 148;
        let l = h.observe(&d);
        assert!(l.changed.is_empty(), "roaming is no configuration change");
        assert_eq!(l.endpoint_changes[&Key([1; 32])], 2);

        d.peers.pop();
        let l = h.observe(&d);
        assert_eq!(l.changed[0].value, "removed");
        assert_eq!(ConfigField::ALL.map(|f| count(&l, f)), [1, 1, 1, 1, 1, 1], "{:?}", l.config_changes);
    }

    #[test]
    fn counters_never_go_backwards_and_removed_peers_start_fresh() {
        let mut h = History::default();
        let k = Key([1; 32]);
        h.observe(&dev(&[(1, None)]));
        let rx = PeerCounter::ReceiveBytes;
        assert_eq!(h.peer_counter("wg0", &k, rx, 100), 100);
        assert_eq!(h.peer_counter("wg0", &k, rx, 150), 150);
        // The device was created again: WireGuard counts from zero; we continue.
        assert_eq!(h.peer_counter("wg0", &k, rx, 20), 170);
        assert_eq!(h.peer_counter("wg0", &k, rx, 30), 180);
        // Another counter of the same peer is its own.
        assert_eq!(h.peer_counter("wg0", &k, PeerCounter::Packets(1), 7), 7);
        // Removed and added again: a fresh series.
        h.observe(&dev(&[]));
        h.observe(&dev(&[(1, None)]));
        assert_eq!(h.peer_counter("wg0", &k, rx, 5), 5);
        let c = DeviceCounter::Invalid(Invalid::BadSize);
        assert_eq!(h.device_counter("wg0", c, 9), 9);
        assert_eq!(h.device_counter("wg0", c, 1), 10);
        assert_eq!(h.device_counter("wg0", DeviceCounter::Invalid(Invalid::TooShort), 1), 1);
    }

    #[test]
    fn every_peer_counter_has_its_own_place() {
        let mut all = vec![PeerCounter::ReceiveBytes, PeerCounter::TransmitBytes];
        for d in 0..DIRECTIONS {
            all.extend([PeerCounter::Packets(d), PeerCounter::PayloadBytes(d)]);
            all.extend(MessageType::ALL.map(|t| PeerCounter::Messages(d, t)));
        }
        all.extend((0..PATH_COUNTS).map(PeerCounter::Path));
        let mut places: Vec<usize> = all.iter().map(|c| c.index()).collect();
        places.sort();
        assert_eq!(places, (0..PeerCounter::COUNT).collect::<Vec<_>>());
    }
}
