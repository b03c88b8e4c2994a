//! The read side: one typed [`Reading`] of everything the programs counted and measured,
//! summed over CPUs and given to peers by slot, with the peers' data messages folded into
//! their message counts.

use std::{os::fd::AsFd, time::Duration};

use anyhow::{anyhow, Result};
use wg_common::{
    latency::{stats, HistKey, HistValue},
    names,
    protocol::{Invalid, MessageCounts, MessageType, NO_SLOT},
    Counter, PeerCounters, Unattributed, DIRECTIONS,
};

use super::{DeviceProbe, PROGRAMS, UNDERLAY_PROGRAMS};
use crate::wireguard::{Key, KeyMap};

/// What the programs of one device counted and measured, as of one reading.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Per peer (peers with a slot).
    pub counters: KeyMap<PeerCounters>,
    /// Packets no peer could be given, by direction and [`Unattributed`] reason.
    pub unattributed: [[Counter; Unattributed::ALL.len()]; DIRECTIONS],
    /// The kernel's accounting of each program (non-zero only while bpf stats are on).
    pub program_stats: Vec<ProgramStats>,
    /// Latency histogram entries with samples: (peer if known, key, value).
    pub latency: Vec<(Option<Key>, HistKey, HistValue)>,
    pub latency_stats: LatencyStats,
    /// Packets waiting for their answer now.
    pub pending: u64,
    /// Underlay messages per peer, data messages included, and the device's own (peer
    /// unknown).
    pub messages: KeyMap<MessageCounts>,
    pub device_messages: MessageCounts,
    /// Datagrams to the device's port that were no valid message, by [`Invalid`] reason.
    pub invalid: [u64; Invalid::ALL.len()],
}

/// The kernel's accounting of one program (bpf stats): cumulative run time and runs.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_time: Duration,
    pub runs: u64,
}

impl DeviceProbe {
    /// Reads everything, after forgetting the packets that waited longer than `pending_ttl`
    /// for their answer.
    pub fn read(&mut self, pending_ttl: Duration) -> Result<Reading> {
        let pending = self.expire_pending(pending_ttl)?;
        let counters = self.all_peer_counters()?;
        let (mut messages, device_messages) = self.messages()?;
        fold_data_messages(&mut messages, &counters);
        Ok(Reading {
            unattributed: self.unattributed()?,
            program_stats: self.program_stats(),
            latency: self.histograms()?,
            latency_stats: self.latency_stats()?,
            pending,
            messages,
            device_messages,
            invalid: self.invalid()?,
            counters,
        })
    }

    /// Every latency histogram entry with samples, summed over CPUs: (peer, kind, bucket,
    /// samples); the peer is `None` for samples of the device whose peer was not known (an
    /// endpoint not synced yet). Peers without samples have no entries.
    pub fn histograms(&self) -> Result<Vec<(Option<Key>, HistKey, HistValue)>> {
        let by_slot = self.synced.slots.by_slot();
        let mut out = Vec::new();
        for item in self.maps.hist.iter() {
            let (k, per_cpu) = item?;
            let peer = by_slot.get(&k.slot).copied();
            if peer.is_none() && k.slot != NO_SLOT {
                continue; // a freed slot's leftovers, removed at the next sync
            }
            let mut v = HistValue::default();
            for c in per_cpu.iter() {
                v.count += c.count;
                v.sum_ns += c.sum_ns;
            }
            if v.count > 0 {
                out.push((peer, k, v));
            }
        }
        Ok(out)
    }

    /// Underlay messages per peer, summed over CPUs, and the device's own (peer unknown).
    /// Data messages are not in them: the programs count those in the peer counters (see
    /// [`Reading`]).
    fn messages(&self) -> Result<(KeyMap<MessageCounts>, MessageCounts)> {
        let by_slot = self.synced.slots.by_slot();
        let mut peers = KeyMap::default();
        let mut device = MessageCounts::default();
        for item in self.maps.messages.iter() {
            let (slot, per_cpu) = item?;
            let sum = sum_messages(per_cpu.iter());
            if slot == NO_SLOT {
                device = sum;
            } else if let Some(k) = by_slot.get(&slot) {
                peers.insert(*k, sum);
            }
        }
        Ok((peers, device))
    }

    /// Datagrams to the device's port that were no valid message, by [`Invalid`] reason.
    pub fn invalid(&self) -> Result<[u64; Invalid::ALL.len()]> {
        let mut out = [0; Invalid::ALL.len()];
        for r in Invalid::ALL {
            out[r as usize] = self.maps.invalid.get(&(r as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Frees the places of packets that waited longer than `ttl` for an answer
    /// (CLOCK_MONOTONIC, the programs' clock). Returns how many are still waiting.
    pub fn expire_pending(&mut self, ttl: Duration) -> Result<u64> {
        let found = self.maps.pending.expire(monotonic_ns(), ttl.as_nanos() as u64);
        self.expired += found.expired;
        Ok(found.waiting)
    }

    /// The latency counters: (recorded, matched, displaced by a newer question, samples lost
    /// because the histogram map was full, expired by the collector).
    pub fn latency_stats(&self) -> Result<LatencyStats> {
        let sum = |i: u32| -> Result<u64> { Ok(self.maps.latency_stats.get(&i, 0)?.iter().sum()) };
        Ok(LatencyStats {
            recorded: sum(stats::RECORDED)?,
            matched: sum(stats::MATCHED)?,
            displaced: sum(stats::DISPLACED)?,
            hist_full: sum(stats::HIST_FULL)?,
            fifo_resync: sum(stats::FIFO_RESYNC)?,
            fifo_overflow: sum(stats::FIFO_OVERFLOW)?,
            expired: self.expired,
            capacity: self.maps.pending.places(),
        })
    }

    /// Every peer's counters summed over all CPUs, read in batches (one syscall per 4096
    /// slots) where the live peers fill most of the slots given out so far; one lookup per
    /// peer where they are sparse (after heavy churn the high-water mark can be far above the
    /// peers there are: the soak found batch reads of 65k mostly idle slots).
    pub fn all_peer_counters(&self) -> Result<KeyMap<PeerCounters>> {
        let by_slot = self.synced.slots.by_slot();
        let one_by_one =
            || by_slot.values().filter_map(|k| self.peer_counters(k).transpose().map(|c| c.map(|c| (*k, c)))).collect();
        if (by_slot.len() as u64) * 2 < self.synced.slots.high_water() as u64 {
            return one_by_one();
        }
        let sums = match crate::bpf::batch::lookup_percpu_array::<PeerCounters, PeerCounters>(
            self.maps.counters_fd.as_fd(),
            self.synced.slots.high_water(),
            self.cpus,
            |per_cpu| sum_counters(per_cpu.iter()),
        ) {
            Ok(sums) => sums,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return one_by_one(),
            Err(e) => return Err(anyhow!("reading {} in batches: {e}", names::PEER_COUNTERS)),
        };
        Ok(sums.into_iter().enumerate().filter_map(|(slot, c)| Some((*by_slot.get(&(slot as u32))?, c))).collect())
    }

    /// A peer's counters summed over all CPUs; `None` for a peer without a slot.
    pub fn peer_counters(&self, key: &Key) -> Result<Option<PeerCounters>> {
        let Some(slot) = self.synced.slots.get(key) else { return Ok(None) };
        Ok(Some(sum_counters(self.maps.counters.get(&slot, 0)?.iter())))
    }

    /// Packets no peer could be given, by direction and reason, summed over all CPUs.
    pub fn unattributed(&self) -> Result<[[Counter; Unattributed::ALL.len()]; DIRECTIONS]> {
        let mut out = [[Counter::default(); Unattributed::ALL.len()]; DIRECTIONS];
        for (d, row) in out.iter_mut().enumerate() {
            for reason in Unattributed::ALL {
                let cell = &mut row[reason as usize];
                for c in self.maps.unattributed.get(&wg_common::unattributed_index(d, reason), 0)?.iter() {
                    cell.packets += c.packets;
                    cell.bytes += c.bytes;
                }
            }
        }
        Ok(out)
    }

    /// The kernel's run time and run count of each program (non-zero only while bpf stats
    /// are enabled).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        PROGRAMS
            .iter()
            .chain(&UNDERLAY_PROGRAMS)
            .filter_map(|(name, _)| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats { program: name, run_time: info.run_time(), runs: info.run_count() })
            })
            .collect()
    }

    /// Passes the programs' pending log records on.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

/// One slot's message counts summed over the CPUs.
pub(super) fn sum_messages<'a>(per_cpu: impl Iterator<Item = &'a MessageCounts>) -> MessageCounts {
    let mut sum = MessageCounts::default();
    for c in per_cpu {
        for (d, row) in c.counts.iter().enumerate() {
            for (t, n) in row.iter().enumerate() {
                sum.counts[d][t] += n;
            }
        }
    }
    sum
}

fn sum_counters<'a>(per_cpu: impl Iterator<Item = &'a PeerCounters>) -> PeerCounters {
    let mut sum = PeerCounters::default();
    for c in per_cpu {
        for d in 0..DIRECTIONS {
            sum.dir[d].packets += c.dir[d].packets;
            sum.dir[d].bytes += c.dir[d].bytes;
            sum.data_messages[d] += c.data_messages[d];
        }
        sum.path.add(&c.path);
    }
    sum
}

/// Adds each peer's data messages, which the programs count in its per-CPU counters (an
/// inlined array lookup, where the message hash cost ~20 ns a datagram), to its message
/// counts.
fn fold_data_messages(messages: &mut KeyMap<MessageCounts>, counters: &KeyMap<PeerCounters>) {
    let data = MessageType::Data as usize;
    for (k, c) in counters {
        if c.data_messages.iter().any(|n| *n > 0) {
            let m = messages.entry(*k).or_default();
            for d in 0..DIRECTIONS {
                m.counts[d][data] += c.data_messages[d];
            }
        }
    }
}

/// What happened to packets waiting for their answer, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyStats {
    pub recorded: u64,
    pub matched: u64,
    pub displaced: u64,
    pub hist_full: u64,
    pub fifo_resync: u64,
    pub fifo_overflow: u64,
    pub expired: u64,
    pub capacity: u32,
}

/// CLOCK_MONOTONIC in nanoseconds: what bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_messages_fold_into_the_message_counts() {
        let (a, b, c) = (Key([1; 32]), Key([2; 32]), Key([3; 32]));
        let data = MessageType::Data as usize;
        let mut messages = KeyMap::default();
        let mut m = MessageCounts::default();
        m.counts[0][MessageType::HandshakeInitiation as usize] = 2;
        m.counts[1][data] = 1; // never written by the programs, but kept
        messages.insert(a, m);
        let mut counters = KeyMap::default();
        counters.insert(a, PeerCounters { data_messages: [5, 7], ..Default::default() });
        counters.insert(b, PeerCounters { data_messages: [0, 3], ..Default::default() });
        // A peer that sent no data message gets no message row.
        counters.insert(c, PeerCounters::default());
        fold_data_messages(&mut messages, &counters);
        assert_eq!(messages[&a].counts[0][data], 5);
        assert_eq!(messages[&a].counts[1][data], 8);
        assert_eq!(messages[&a].counts[0][MessageType::HandshakeInitiation as usize], 2);
        assert_eq!(messages[&b].counts[0][data], 0);
        assert_eq!(messages[&b].counts[1][data], 3);
        assert!(!messages.contains_key(&c));
    }
}
