//! Everything the programs write, as plain data keyed by peer, and a way to empty it: what
//! the differential test of the kernel programs (tests/model, fuzz target `kernel`) compares
//! with its reference model after every packet, and clears between inputs. The daemon never
//! calls these: reading every map whole is a test's work, not a scrape's.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use wg_common::{
    latency::{fifo_key, stats, Fifo, PendingKey},
    path::RxSession,
    protocol::{Invalid, MessageCounts, NO_SLOT},
    unattributed_index, Counter, PeerCounters, Unattributed, DIRECTIONS,
};

use super::DeviceProbe;
use crate::wireguard::Key;

/// Whose entry: a peer, or `None` for the device's own (NO_SLOT: the peer was not known).
pub type Owner = Option<Key>;

/// The programs' state, summed over CPUs; entries that are all zero are left out, so two
/// states compare equal exactly when the programs' observable effects were the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramState {
    pub counters: BTreeMap<Key, PeerCounters>,
    pub unattributed: [[Counter; Unattributed::ALL.len()]; DIRECTIONS],
    /// Underlay messages as the programs keep them (a peer's data messages are in its
    /// counters, not here).
    pub messages: BTreeMap<Owner, MessageCounts>,
    pub invalid: [u64; Invalid::ALL.len()],
    /// Handshake indices this device gave out → whose.
    pub indices: BTreeMap<u32, Owner>,
    /// Questions waiting: place in the pending table → key.
    pub pending: BTreeMap<u32, PendingKey>,
    /// Latency samples by (whose, kind) (the buckets depend on the clock; the counts do not).
    pub samples: BTreeMap<(Owner, u16), u64>,
    pub latency_stats: [u64; stats::ENTRIES as usize],
}

impl DeviceProbe {
    /// Reads [`ProgramState`].
    pub fn state(&self) -> Result<ProgramState> {
        let by_slot = self.synced.slots.by_slot();
        let owner = |slot: u32| -> Result<Owner> {
            match by_slot.get(&slot) {
                Some(k) => Ok(Some(*k)),
                None if slot == NO_SLOT => Ok(None),
                None => Err(anyhow!("slot {slot} has no peer")),
            }
        };
        let mut s = ProgramState::default();
        for key in by_slot.values() {
            let c = self.peer_counters(key)?.unwrap_or_default();
            if c != PeerCounters::default() {
                s.counters.insert(*key, c);
            }
        }
        s.unattributed = self.unattributed()?;
        for item in self.maps.messages.iter() {
            let (slot, per_cpu) = item?;
            let sum = super::read::sum_messages(per_cpu.iter());
            if sum != MessageCounts::default() {
                s.messages.insert(owner(slot)?, sum);
            }
        }
        s.invalid = self.invalid()?;
        for item in self.maps.indices.iter() {
            let (index, slot) = item?;
            s.indices.insert(index, owner(slot)?);
        }
        s.pending = self.maps.pending.waiting().into_iter().collect();
        for item in self.maps.hist.iter() {
            let (k, per_cpu) = item?;
            let n: u64 = per_cpu.iter().map(|v| v.count).sum();
            if n > 0 {
                *s.samples.entry((owner(k.slot)?, k.kind)).or_default() += n;
            }
        }
        for i in 0..stats::ENTRIES {
            s.latency_stats[i as usize] = self.maps.latency_stats.get(&i, 0)?.iter().sum();
        }
        Ok(s)
    }

    /// Empties everything [`ProgramState`] holds (and the delay FIFOs and receive sessions), leaving the peers,
    /// their prefixes and endpoints as synced: the programs then run as on a fresh load.
    pub fn clear_state(&mut self) -> Result<()> {
        let cpus = self.cpus;
        let m = &mut self.maps;
        for slot in 0..self.synced.slots.high_water() {
            zero(&mut m.counters, slot, cpus)?;
            m.rx_sessions.set(slot, RxSession::default(), 0)?;
            for decap in [false, true] {
                m.fifos.set(fifo_key(slot, decap), Fifo::default(), 0)?;
            }
        }
        for d in 0..DIRECTIONS {
            for r in Unattributed::ALL {
                zero(&mut m.unattributed, unattributed_index(d, r), cpus)?;
            }
        }
        for r in Invalid::ALL {
            zero(&mut m.invalid, r as u32, cpus)?;
        }
        for i in 0..stats::ENTRIES {
            zero(&mut m.latency_stats, i, cpus)?;
        }
        for k in m.messages.keys().collect::<Result<Vec<_>, _>>()? {
            m.messages.remove(&k)?;
        }
        for k in m.indices.keys().collect::<Result<Vec<_>, _>>()? {
            m.indices.remove(&k)?;
        }
        for k in m.hist.keys().collect::<Result<Vec<_>, _>>()? {
            m.hist.remove(&k)?;
        }
        m.pending.clear();
        self.expired = 0;
        Ok(())
    }
}

fn zero<V: aya::Pod + Default + Clone>(map: &mut PerCpuArray<MapData, V>, i: u32, cpus: usize) -> Result<()> {
    let values = PerCpuValues::try_from(vec![V::default(); cpus])?;
    map.set(i, values, 0)?;
    Ok(())
}
