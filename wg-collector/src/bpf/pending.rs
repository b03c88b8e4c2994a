//! The pending table (questions waiting for their answer, see wg_common::latency::PendingEntry)
//! as the collector sees it: the programs' array mapped into our memory (the map is
//! BPF_F_MMAPABLE), so expiring is a walk over memory with a compare-and-swap per expired
//! question, not a syscall per entry, and cannot race an answer: whoever changes `sent` from
//! the time it read ends the question.

use std::sync::atomic::{AtomicU64, Ordering};

use wg_common::latency::{PendingEntry, PendingKey};

use super::mapped::MappedArray;

pub struct PendingTable {
    entries: MappedArray<PendingEntry>,
}

/// What one walk over the table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Questions still waiting (younger than the TTL).
    pub waiting: u64,
    /// Questions older than the TTL, freed by this walk.
    pub expired: u64,
}

impl PendingTable {
    pub fn new(entries: MappedArray<PendingEntry>) -> Self {
        Self { entries }
    }

    /// How many questions may wait at once.
    pub fn places(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Frees the places of questions that left more than `ttl_ns` before `now_ns`
    /// (CLOCK_MONOTONIC, the programs' clock).
    pub fn expire(&self, now_ns: u64, ttl_ns: u64) -> Expiry {
        let mut found = Expiry::default();
        for i in 0..self.entries.len() {
            let sent = self.sent(i);
            let t = sent.load(Ordering::Relaxed);
            if t == 0 {
                continue;
            }
            if now_ns.saturating_sub(t) <= ttl_ns {
                found.waiting += 1;
            } else if sent.compare_exchange(t, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                // Else an answer took it, or a newer question its place, meanwhile.
                found.expired += 1;
            }
        }
        found
    }

    /// The questions waiting now: (place, key). For tests, which compare the table with a
    /// model of it; a question being answered meanwhile may or may not be in it.
    pub fn waiting(&self) -> Vec<(u32, PendingKey)> {
        (0..self.entries.len())
            .filter(|&i| self.sent(i).load(Ordering::Relaxed) != 0)
            // SAFETY: an entry of the mapping; the key is plain data (a torn read only
            // while a program rewrites the place, which a test does not do meanwhile).
            .map(|i| (i as u32, unsafe { (*self.entries.entry(i)).key }))
            .collect()
    }

    /// Empties every place (tests: a fresh table without reloading the programs).
    pub fn clear(&self) {
        for i in 0..self.entries.len() {
            self.sent(i).store(0, Ordering::Relaxed);
            // SAFETY: an entry of the mapping; with `sent` 0 no program reads the key.
            unsafe { (*self.entries.entry(i)).key = PendingKey::default() };
        }
    }

    fn sent(&self, i: usize) -> &AtomicU64 {
        // SAFETY: an entry of the mapping, which lives as long as `self`; `sent` is 8-aligned
        // (page-aligned mapping, 56-byte entries, the field at offset 48). The programs write
        // it with whole 8-byte stores and BPF_XCHG.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.entries.entry(i)).sent) }
    }
}
