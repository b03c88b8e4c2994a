//! Path loss, reordering and duplicates (wg_common::path), from the definitions: per peer, the
//! current receive session (our receiver index) keeps the set of counters seen in the last 64
//! below and including the highest; a counter that leaves that range unseen is lost, one
//! below the highest not seen before is reordered, one seen before is a duplicate, one below
//! the range (or below the session's first) is reordered. A message of another index starts
//! a new session (at 0 when this device was seen giving the index out in a handshake, else at
//! its own counter), and the old one's unseen counters are lost; a message of the session
//! before is reordered.

use std::collections::BTreeSet;

use wg_collector::wireguard::Key;
use wg_common::path::{PathCounts, WINDOW};

use crate::model::Model;

/// One session, as a set.
#[derive(Clone, Debug)]
pub struct Session {
    start: u64,
    /// Highest seen + 1 (`start` before any).
    next: u64,
    seen: BTreeSet<u64>,
}

impl Session {
    pub fn new(start: u64) -> Self {
        Self { start, next: start, seen: BTreeSet::new() }
    }

    /// The lowest counter still in the window.
    fn low(&self) -> u64 {
        self.next.saturating_sub(WINDOW).max(self.start)
    }

    /// Counters in `low..high` not seen (counted, not walked: a jump can span billions).
    fn unseen_from(&self, low: u64, high: u64) -> u64 {
        if high <= low {
            return 0;
        }
        high - low - self.seen.range(low..high).count() as u64
    }

    pub fn receive(&mut self, c: u64, out: &mut PathCounts) {
        if c < self.start || c + WINDOW < self.next {
            out.reordered += 1;
        } else if c >= self.next {
            let low = (c + 1).saturating_sub(WINDOW).max(self.start);
            out.lost += self.unseen_from(self.low(), low);
            self.next = c + 1;
            self.seen.insert(c);
            self.seen.retain(|&x| x >= low);
        } else if self.seen.insert(c) {
            out.reordered += 1;
        } else {
            out.duplicate += 1;
        }
    }

    /// The session ended: what is unseen in the window is lost.
    pub fn settle(&self) -> u64 {
        self.unseen_from(self.low(), self.next)
    }
}

/// A peer's sessions.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    current: Option<(u32, Session)>,
    prev: Option<u32>,
}

impl Peer {
    pub fn receive(&mut self, index: u32, c: u64, handshake_seen: bool, out: &mut PathCounts) {
        match &mut self.current {
            Some((i, s)) if *i == index => return s.receive(c, out),
            _ if self.prev == Some(index) => return out.reordered += 1,
            Some((i, s)) => {
                out.lost += s.settle();
                self.prev = Some(*i);
            }
            None => {}
        }
        let mut s = Session::new(if handshake_seen { 0 } else { c });
        s.receive(c, out);
        self.current = Some((index, s));
    }
}

impl Model {
    /// Transport message `counter` of session `index` from `peer`.
    pub(crate) fn transport(&mut self, peer: Key, index: u32, counter: Option<u64>) {
        let seen = self.state.indices.contains_key(&index);
        let mut out = PathCounts::default();
        match counter {
            Some(c) => self.sessions.entry(peer).or_default().receive(index, c, seen, &mut out),
            None => out.unchecked += 1,
        }
        if out != PathCounts::default() {
            self.state.counters.entry(peer).or_default().path.add(&out);
        }
    }
}

#[cfg(test)]
mod tests {
    use wg_common::path::Window;

    use super::*;

    /// Found by the kernel fuzz target (a timeout): a jump of a billion counters was walked
    /// one by one here. Counted, and the same as the bitmap's.
    #[test]
    fn a_jump_of_a_trillion_counters_is_counted_not_walked() {
        let (mut s, mut w, mut a, mut b) =
            (Session::new(0), Window::new(0), PathCounts::default(), PathCounts::default());
        for c in [0, 1 << 40, (1 << 40) - 3] {
            s.receive(c, &mut a);
            w.receive(c, &mut b);
        }
        assert_eq!(a, b);
        assert_eq!((a.lost, a.reordered, s.settle()), ((1 << 40) - 64, 1, 62));
    }

    /// The kernel's bitmap window (wg_common::path) against this set, on random sequences:
    /// mostly forward by small steps, sometimes back, sometimes far.
    #[test]
    fn the_bitmap_window_agrees_with_the_set() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..3000 {
            let start = if round % 3 == 0 { next() % 1000 } else { 0 };
            let (mut w, mut s) = (Window::new(start), Session::new(start));
            let (mut a, mut b) = (PathCounts::default(), PathCounts::default());
            let mut c = start;
            for _ in 0..(next() % 300) {
                c = match next() % 16 {
                    0 => c.saturating_sub(next() % 80),
                    1 => c + next() % 200,
                    2 => c,
                    _ => c + 1 + next() % 3,
                };
                w.receive(c, &mut a);
                s.receive(c, &mut b);
                assert_eq!(a, b, "round {round}, counter {c}");
            }
            assert_eq!(w.settle(), s.settle(), "round {round}");
        }
    }
}
