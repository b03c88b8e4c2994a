//! Path loss, reordering and duplicates, from the counters of the transport messages a peer
//! sends us (../shared/docs/wireguard-wire.md): within one receive session (our receiver
//! index) the sender numbers its messages 0, 1, 2, … So, at the underlay's ingress:
//! - a counter that leaves the window unseen is a message lost on the path;
//! - a counter below the highest seen, not seen before, is a reordered message;
//! - a counter seen before is a duplicate (or a replay).
//!
//! The window is WireGuard's own idea (its replay window), 64 counters wide: the highest
//! counter seen and the 63 below it, one bit each. A counter older than the window cannot
//! be told apart any more: it is counted as reordered (it did arrive out of order), and if it
//! had not been seen it was counted lost when it left the window. When a session ends (the
//! peer's next session sends its first message) the counters still in the window are settled:
//! the unseen ones are lost.
//!
//! Both sides use this module: the kernel under the session's lock (see [`RxSession`]), the
//! collector's tests against a reference written from the definitions above (tests/model:
//! the two agree on random sequences, and the kernel's through BPF_PROG_TEST_RUN).

/// Counters of a peer's received messages, in [`crate::PeerCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    pub lost: u64,
    pub reordered: u64,
    pub duplicate: u64,
    /// Messages not checked against the window: another CPU held the session longer than
    /// the programs wait (it should stay 0; counted so that it is seen if it is not).
    pub unchecked: u64,
}

impl PathCounts {
    #[inline(always)]
    pub fn add(&mut self, o: &PathCounts) {
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.duplicate += o.duplicate;
        self.unchecked += o.unchecked;
    }
}

/// Counters per window.
pub const WINDOW: u64 = 64;

/// One session's window: counters below `start` were never expected (the first counter
/// seen when the collector did not see the handshake); `next` is the highest seen + 1
/// (`start` before any); bit i of `seen` is counter `next - 1 - i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub next: u64,
    pub seen: u64,
}

impl Window {
    /// A session whose first counter is `start` (0: its handshake was seen, so every
    /// counter is expected).
    #[inline(always)]
    pub const fn new(start: u64) -> Self {
        // The places below `start` count as seen, so they are never lost.
        Self { start, next: start, seen: u64::MAX }
    }

    /// Message `counter` arrived: what it tells, added to `out`.
    #[inline(always)]
    pub fn receive(&mut self, counter: u64, out: &mut PathCounts) {
        if counter < self.start {
            out.reordered += 1;
        } else if counter >= self.next {
            // The window moves up by d: the d oldest places leave it (their unseen counters
            // are lost), and the counters between the old highest and this one enter unseen.
            let d = counter - self.next + 1;
            if d >= WINDOW {
                out.lost += self.seen.count_zeros() as u64 + (d - WINDOW);
                self.seen = 1;
            } else {
                let leaving = self.seen >> (WINDOW - d);
                out.lost += d - leaving.count_ones() as u64;
                self.seen = (self.seen << d) | 1;
            }
            self.next = counter + 1;
        } else {
            let age = self.next - 1 - counter;
            if age >= WINDOW {
                out.reordered += 1;
            } else if self.seen & (1 << age) != 0 {
                out.duplicate += 1;
            } else {
                self.seen |= 1 << age;
                out.reordered += 1;
            }
        }
    }

    /// The session ended: counters still unseen in the window are lost.
    #[inline(always)]
    pub fn settle(&self) -> u64 {
        self.seen.count_zeros() as u64
    }
}

/// [`RxSession::flags`]: the slot has a session.
pub const SESSION_OPEN: u32 = 1;
/// [`RxSession::flags`]: `prev` names the session before it.
pub const SESSION_PREV: u32 = 2;

/// The receive session of one peer slot (the map `RX_SESSIONS`, shared by all CPUs): a
/// session's messages may arrive on any CPU (RSS, RPS, a userspace WireGuard's batches on
/// several threads), so its window is one, and a CPU changes it only while it holds `lock`
/// (taken with an atomic compare-and-exchange, released with an exchange; a program waits a
/// bounded number of tries, then counts the message unchecked).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxSession {
    pub lock: u64,
    /// Our receiver index of the current session.
    pub index: u32,
    /// The one before: its late messages are counted reordered, never a new session.
    pub prev: u32,
    pub flags: u32,
    pub _pad: u32,
    pub start: u64,
    pub next: u64,
    pub seen: u64,
}

impl RxSession {
    #[inline(always)]
    pub fn window(&self) -> Window {
        Window { start: self.start, next: self.next, seen: self.seen }
    }

    #[inline(always)]
    pub fn set_window(&mut self, w: &Window) {
        self.start = w.start;
        self.next = w.next;
        self.seen = w.seen;
    }

    /// Message `counter` of the session whose receiver index is `index`; `handshake_seen`:
    /// whether this device was seen giving `index` out (then the session starts at 0).
    /// Call with the lock held.
    #[inline(always)]
    pub fn receive(&mut self, index: u32, counter: u64, handshake_seen: impl FnOnce() -> bool, out: &mut PathCounts) {
        if self.flags & SESSION_OPEN != 0 && self.index == index {
            let mut w = self.window();
            w.receive(counter, out);
            self.set_window(&w);
            return;
        }
        if self.flags & SESSION_PREV != 0 && self.prev == index {
            // A late message of the session before: its window is settled.
            out.reordered += 1;
            return;
        }
        // A new session: the old one ends.
        if self.flags & SESSION_OPEN != 0 {
            out.lost += self.window().settle();
            self.prev = self.index;
            self.flags |= SESSION_PREV;
        }
        let mut w = Window::new(if handshake_seen() { 0 } else { counter });
        w.receive(counter, out);
        self.index = index;
        self.flags |= SESSION_OPEN;
        self.set_window(&w);
    }

    /// The session ended without a successor (WireGuard's session expired: nothing of it can
    /// arrive any more): its unseen counters are lost, and a late message of it is reordered.
    /// Call with the lock held.
    #[inline(always)]
    pub fn close(&mut self, out: &mut PathCounts) {
        if self.flags & SESSION_OPEN != 0 {
            out.lost += self.window().settle();
            self.prev = self.index;
            self.flags = SESSION_PREV;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn run(start: u64, counters: &[u64]) -> (PathCounts, u64) {
        let (mut w, mut out) = (Window::new(start), PathCounts::default());
        counters.iter().for_each(|&c| w.receive(c, &mut out));
        (out, w.settle())
    }

    #[test]
    fn in_order_nothing_lost() {
        let all: Vec<u64> = (0..1000).collect();
        assert_eq!(run(0, &all), (PathCounts::default(), 0));
    }

    #[test]
    fn every_tenth_dropped_is_lost_once_settled() {
        let kept: Vec<u64> = (0..1000).filter(|c| c % 10 != 9).collect();
        let (out, settled) = run(0, &kept);
        // 9, 19, …, 989: 999 was dropped too, but nothing after it shows it was sent.
        assert_eq!(out.lost + settled, 99);
        assert_eq!((out.reordered, out.duplicate), (0, 0));
        // The window holds 935..=998: 939, 949, …, 989 are still in it.
        assert_eq!(settled, 6);
    }

    #[test]
    fn the_first_counter_missing_from_a_handshake_seen_session_is_lost() {
        assert_eq!(run(0, &[1, 2, 3]).1, 1);
        // Unseen handshake: the first counter seen starts the session.
        assert_eq!(run(1, &[1, 2, 3]).1, 0);
    }

    #[test]
    fn a_swap_is_one_reordered_and_a_repeat_one_duplicate() {
        let (out, settled) = run(0, &[0, 2, 1, 3, 3, 1]);
        assert_eq!((out.lost, settled, out.reordered, out.duplicate), (0, 0, 1, 2));
    }

    #[test]
    fn jumps_beyond_the_window_count_every_counter_skipped() {
        let (out, settled) = run(0, &[0, 200, 201]);
        assert_eq!(out.lost + settled, 199);
        let (out, _) = run(0, &[0, 64]);
        assert_eq!(out.lost, 0, "1..63 are still in the window");
        let (out, _) = run(0, &[0, 65]);
        assert_eq!(out.lost, 1, "1 left it");
    }

    #[test]
    fn too_late_is_reordered() {
        let (out, settled) = run(0, &[0, 100, 1]);
        assert_eq!((out.lost + settled, out.reordered), (99, 1));
    }

    #[test]
    fn sessions_switch_settle_and_keep_the_previous_apart() {
        let (mut s, mut out) = (RxSession::default(), PathCounts::default());
        for c in [0u64, 1, 3, 4] {
            s.receive(7, c, || true, &mut out);
        }
        assert_eq!(out, PathCounts::default());
        // A new session: 2 of the old one is settled lost; its 0 missing too (handshake seen).
        s.receive(9, 1, || true, &mut out);
        assert_eq!(out.lost, 1);
        // A late message of session 7: reordered, and it does not switch back.
        s.receive(7, 5, || true, &mut out);
        assert_eq!((out.lost, out.reordered), (1, 1));
        s.receive(9, 2, || true, &mut out);
        s.receive(11, 40, || false, &mut out);
        assert_eq!(out.lost, 2, "session 9's 0, settled; 11 starts at 40");
        assert_eq!((s.index, s.prev, s.start), (11, 9, 40));
        s.receive(11, 42, || false, &mut out);
        s.close(&mut out);
        assert_eq!(out.lost, 3, "41, settled when the session expired");
        s.receive(11, 43, || false, &mut out);
        assert_eq!((out.lost, out.reordered), (3, 2), "a message of the closed session is late");
        s.close(&mut out);
        assert_eq!(out.lost, 3, "closing twice settles once");
    }
}
