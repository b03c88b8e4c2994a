//! The write side: the maps made to say what WireGuard says. Every peer has a slot, every
//! allowed IP points at its peer's slot, every endpoint at its peer; what WireGuard no longer
//! has is removed, and a freed slot keeps nothing of its last peer.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key as LpmKey, PerCpuValues};
use ipnet::IpNet;
use wg_common::{
    latency::{fifo_key, Endpoint, Fifo, HistKey},
    path::RxSession,
    PeerCounters,
};

use super::{DeviceProbe, Maps};
use crate::wireguard::{FastState, Key, Peer};

impl DeviceProbe {
    /// Makes the maps say what `peers` say. A peer seen for the first time starts from zero;
    /// a removed peer's slot is freed.
    pub fn sync(&mut self, peers: &[Peer]) -> Result<()> {
        let wanted = self.assign_slots(peers)?;
        self.sync_prefixes(&wanted)?;
        self.sync_endpoints(peers)?;
        self.release_gone(peers);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.settle_expired(peers, now);
        Ok(())
    }

    /// Tells the underlay programs which UDP port is this device's.
    pub fn set_listen_port(&mut self, port: u16) -> Result<()> {
        if self.maps.listen_port.get(&0, 0)? != port as u32 {
            self.maps.listen_port.set(0, port as u32, 0)?;
        }
        Ok(())
    }

    /// Gives every peer a slot (a new one starts from zero); returns the prefixes wanted.
    fn assign_slots(&mut self, peers: &[Peer]) -> Result<HashMap<IpNet, u32, FastState>> {
        let mut wanted = HashMap::with_capacity_and_hasher(peers.len(), FastState::default());
        for p in peers {
            let (slot, fresh) = self.synced.slots.assign(p.public_key)?;
            if fresh {
                let zero = PerCpuValues::try_from(vec![PeerCounters::default(); self.cpus])?;
                self.maps.counters.set(slot, zero, 0).context("zeroing a peer slot")?;
                // A slot used before: its last session is not this peer's.
                self.maps.rx_sessions.set(slot, RxSession::default(), 0).context("clearing a slot's session")?;
                self.maps.slot_keys.insert(slot, p.public_key.0, 0).context("recording a slot's peer")?;
            }
            for net in &p.allowed_ips {
                wanted.insert(*net, slot);
            }
        }
        Ok(wanted)
    }

    /// The host hashes, tries and host block hold exactly the wanted prefixes.
    fn sync_prefixes(&mut self, wanted: &HashMap<IpNet, u32, FastState>) -> Result<()> {
        let (maps, synced) = (&mut self.maps, &mut self.synced);
        // The first sync looks at the block even when adopted maps already hold every prefix.
        let mut changed = !synced.block_followed;
        synced.block_followed = true;
        for (net, slot) in wanted {
            if synced.prefixes.get(net) != Some(slot) {
                maps.insert_prefix(net, *slot).with_context(|| format!("adding allowed IP {net}"))?;
                synced.prefixes.insert(*net, *slot);
                changed = true;
            }
        }
        let stale: Vec<IpNet> = synced.prefixes.keys().filter(|n| !wanted.contains_key(n)).copied().collect();
        for net in stale {
            maps.remove_prefix(&net).with_context(|| format!("removing allowed IP {net}"))?;
            synced.prefixes.remove(&net);
            changed = true;
        }
        if changed {
            let hosts = synced.prefixes.iter().filter_map(|(net, slot)| match net {
                IpNet::V4(n) if n.prefix_len() == 32 => Some((n.addr(), *slot)),
                _ => None,
            });
            maps.host_block.follow(hosts)?;
        }
        Ok(())
    }

    /// ENDPOINTS and the endpoint table hold the peers' endpoints, each with its slot.
    fn sync_endpoints(&mut self, peers: &[Peer]) -> Result<()> {
        let (maps, synced) = (&mut self.maps, &mut self.synced);
        let mut wanted: HashMap<Endpoint, u32, FastState> =
            HashMap::with_capacity_and_hasher(peers.len(), FastState::default());
        for p in peers {
            if let (Some(e), Some(slot)) = (p.endpoint, synced.slots.get(&p.public_key)) {
                wanted.insert(endpoint_key(e), slot);
            }
        }
        let mut changed = !synced.endpoints_placed;
        for (e, slot) in &wanted {
            if synced.endpoints.get(e) != Some(slot) {
                maps.endpoints.insert(e, slot, 0).context("adding an endpoint")?;
                synced.endpoints.insert(*e, *slot);
                changed = true;
            }
        }
        let stale: Vec<Endpoint> = synced.endpoints.keys().filter(|e| !wanted.contains_key(e)).copied().collect();
        for e in stale {
            let _ = maps.endpoints.remove(&e);
            synced.endpoints.remove(&e);
            changed = true;
        }
        if changed {
            maps.endpoint_places.follow(&synced.endpoints);
            synced.endpoints_placed = true;
        }
        Ok(())
    }

    /// Frees the slots of peers WireGuard no longer has, and everything their last peer left.
    fn release_gone(&mut self, peers: &[Peer]) {
        let (maps, synced) = (&mut self.maps, &mut self.synced);
        let wanted: HashSet<&Key, FastState> = peers.iter().map(|p| &p.public_key).collect();
        let gone: Vec<Key> = synced.slots.keys().filter(|k| !wanted.contains(k)).copied().collect();
        let freed: HashSet<u32> = gone.iter().filter_map(|k| synced.slots.release(k)).collect();
        if freed.is_empty() {
            return;
        }
        for slot in &freed {
            let _ = maps.slot_keys.remove(slot);
            // Nor the packets its last peer left inside WireGuard, nor its message counts.
            let _ = maps.fifos.set(fifo_key(*slot, false), Fifo::default(), 0);
            let _ = maps.fifos.set(fifo_key(*slot, true), Fifo::default(), 0);
            let _ = maps.messages.remove(slot);
        }
        // Nor the handshake indices its last peer was given.
        let stale: Vec<u32> =
            maps.indices.iter().filter_map(|r| r.ok()).filter(|(_, s)| freed.contains(s)).map(|(i, _)| i).collect();
        for i in stale {
            let _ = maps.indices.remove(&i);
        }
        // A slot's next peer must not inherit its latency samples.
        let stale: Vec<HistKey> = maps.hist.keys().filter_map(|k| k.ok()).filter(|k| freed.contains(&k.slot)).collect();
        for k in stale {
            let _ = maps.hist.remove(&k);
        }
    }
}

impl Maps {
    /// Host addresses go to the hash maps, shorter prefixes to the tries (see wg-ebpf).
    fn insert_prefix(&mut self, net: &IpNet, slot: u32) -> Result<()> {
        let host = net.prefix_len() == net.max_prefix_len();
        match net.addr() {
            IpAddr::V4(a) if host => {
                self.hosts_v4.insert(a.octets(), slot, 0)?;
                self.host_block.set(a, Some(slot))?;
            }
            IpAddr::V6(a) if host => self.hosts_v6.insert(a.octets(), slot, 0)?,
            IpAddr::V4(a) => self.v4.insert(&LpmKey::new(net.prefix_len().into(), a.octets()), slot, 0)?,
            IpAddr::V6(a) => self.v6.insert(&LpmKey::new(net.prefix_len().into(), a.octets()), slot, 0)?,
        }
        Ok(())
    }

    fn remove_prefix(&mut self, net: &IpNet) -> Result<()> {
        let host = net.prefix_len() == net.max_prefix_len();
        match net.addr() {
            IpAddr::V4(a) if host => {
                self.host_block.set(a, None)?;
                self.hosts_v4.remove(&a.octets())?;
            }
            IpAddr::V6(a) if host => self.hosts_v6.remove(&a.octets())?,
            IpAddr::V4(a) => self.v4.remove(&LpmKey::new(net.prefix_len().into(), a.octets()))?,
            IpAddr::V6(a) => self.v6.remove(&LpmKey::new(net.prefix_len().into(), a.octets()))?,
        }
        Ok(())
    }
}

/// An endpoint as the underlay programs key it: IPv4 mapped into IPv6.
fn endpoint_key(e: SocketAddr) -> Endpoint {
    let addr = match e.ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    Endpoint { addr, port: e.port(), _pad: 0 }
}
