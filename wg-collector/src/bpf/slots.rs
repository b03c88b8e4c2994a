//! Dense peer slots: the index of a peer's counters in the per-CPU counter array.

use std::collections::{HashMap, VecDeque};

use crate::wireguard::{FastState, Key, KeyMap};

/// Gives each peer key a slot below `capacity` and takes it back when the peer goes.
///
/// Freed slots are reused oldest-first, so a slot rests as long as possible before another
/// peer gets it: a packet that looked up the old peer just before its trie entries were
/// removed lands in a slot nobody has yet.
#[derive(Debug)]
pub struct SlotTable {
    by_key: KeyMap<u32>,
    free: VecDeque<u32>,
    next: u32,
    capacity: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("all {0} peer slots are in use (raise --bpf.max-peers)")]
pub struct SlotsFull(pub u32);

impl SlotTable {
    pub fn new(capacity: u32) -> Self {
        Self { by_key: KeyMap::default(), free: VecDeque::new(), next: 0, capacity }
    }

    /// The table an earlier collector left: `owners` are the slots in use; those below the
    /// highest in use that nobody owns are free.
    pub fn restore(capacity: u32, owners: Vec<(u32, Key)>) -> Self {
        let next = owners.iter().map(|(s, _)| s + 1).max().unwrap_or(0).min(capacity);
        let used: std::collections::HashSet<u32> = owners.iter().map(|(s, _)| *s).collect();
        let free = (0..next).filter(|s| !used.contains(s)).collect();
        Self { by_key: owners.into_iter().map(|(s, k)| (k, s)).collect(), free, next, capacity }
    }

    /// Slots below this have been given out at some time; none above.
    pub fn high_water(&self) -> u32 {
        self.next
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn get(&self, key: &Key) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Slot → peer key, for reading maps keyed by slot.
    pub fn by_slot(&self) -> HashMap<u32, Key, FastState> {
        self.by_key.iter().map(|(k, s)| (*s, *k)).collect()
    }

    /// The peer's slot; `fresh` is true when it was just given out (its counters must be
    /// zeroed before use).
    pub fn assign(&mut self, key: Key) -> Result<(u32, bool), SlotsFull> {
        if let Some(&slot) = self.by_key.get(&key) {
            return Ok((slot, false));
        }
        let slot = if self.next < self.capacity {
            self.next += 1;
            self.next - 1
        } else {
            self.free.pop_front().ok_or(SlotsFull(self.capacity))?
        };
        self.by_key.insert(key, slot);
        Ok((slot, true))
    }

    pub fn release(&mut self, key: &Key) -> Option<u32> {
        let slot = self.by_key.remove(key)?;
        self.free.push_back(slot);
        Some(slot)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.by_key.keys()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> Key {
        Key([n; 32])
    }

    #[test]
    fn slots_are_dense_stable_and_reused_oldest_first() {
        let mut t = SlotTable::new(3);
        assert_eq!(t.assign(k(1)).unwrap(), (0, true));
        assert_eq!(t.assign(k(2)).unwrap(), (1, true));
        assert_eq!(t.assign(k(1)).unwrap(), (0, false));
        assert_eq!(t.release(&k(1)), Some(0));
        // Never-used slots go first, then the oldest freed one.
        assert_eq!(t.assign(k(3)).unwrap(), (2, true));
        assert_eq!(t.release(&k(2)), Some(1));
        assert_eq!(t.assign(k(4)).unwrap(), (0, true));
        assert_eq!(t.assign(k(5)).unwrap(), (1, true));
        assert!(t.assign(k(6)).is_err());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_restored_table_keeps_owners_and_frees_the_gaps() {
        let mut t = SlotTable::restore(5, vec![(0, k(1)), (2, k(3))]);
        assert_eq!(t.assign(k(1)).unwrap(), (0, false));
        assert_eq!(t.assign(k(3)).unwrap(), (2, false));
        assert_eq!(t.assign(k(7)).unwrap(), (3, true));
        assert_eq!(t.assign(k(8)).unwrap(), (4, true));
        assert_eq!(t.assign(k(9)).unwrap(), (1, true));
        assert!(t.assign(k(10)).is_err());
    }
}
