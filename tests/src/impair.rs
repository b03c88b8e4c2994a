//! What the relay does to WireGuard's transport messages (type 4) of one direction, on
//! purpose, counting what it did: the truth the path-loss counters are compared with.
//!
//! - Drop every k-th. A drop is counted once a later message of the same session (receiver
//!   index) has passed: a message dropped as the last of its session leaves no trace for
//!   any receiver (nothing after it shows it was sent), so it is not counted.
//! - Swap every k-th with the next one of the same session (it is held until then; a held
//!   message whose next is of another session, or that waits past the relay's read timeout,
//!   goes on unswapped).
//! - Send every k-th twice.

use std::collections::HashMap;

/// Every k-th transport message (0: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    pub drop_every: u64,
    pub swap_every: u64,
    pub duplicate_every: u64,
}

/// What was done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Impaired {
    pub transport: u64,
    pub dropped: u64,
    pub swapped: u64,
    pub duplicated: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) how: Impairment,
    pub(crate) done: Impaired,
    /// Per receiver index: the highest counter dropped whose drop is not counted yet.
    unconfirmed: HashMap<u32, Vec<u64>>,
    held: Option<Vec<u8>>,
}

/// A WireGuard transport message: (receiver index, counter).
fn transport(m: &[u8]) -> Option<(u32, u64)> {
    (m.len() >= 32 && m[..4] == [4, 0, 0, 0])
        .then(|| (u32::from_le_bytes(m[4..8].try_into().unwrap()), u64::from_le_bytes(m[8..16].try_into().unwrap())))
}

impl State {
    /// The datagrams to send for `m`, in order.
    pub(crate) fn pass(&mut self, m: Vec<u8>) -> Vec<Vec<u8>> {
        let Some((index, counter)) = transport(&m) else { return self.flush().into_iter().chain([m]).collect() };
        self.done.transport += 1;
        let n = self.done.transport;
        if let Some(waiting) = self.unconfirmed.get_mut(&index) {
            let before = waiting.len();
            waiting.retain(|&c| c >= counter);
            self.done.dropped += (before - waiting.len()) as u64;
        }
        if self.how.drop_every > 0 && n.is_multiple_of(self.how.drop_every) {
            self.unconfirmed.entry(index).or_default().push(counter);
            return self.flush().into_iter().collect();
        }
        let copies = if self.how.duplicate_every > 0 && n.is_multiple_of(self.how.duplicate_every) {
            self.done.duplicated += 1;
            2
        } else {
            1
        };
        let mut out = Vec::new();
        match self.held.take() {
            Some(h) if transport(&h).map(|t| t.0) == Some(index) => {
                self.done.swapped += 1;
                out.extend(std::iter::repeat_n(m, copies));
                out.push(h);
                return out;
            }
            Some(h) => out.push(h),
            None => {}
        }
        if self.how.swap_every > 0 && n.is_multiple_of(self.how.swap_every) && copies == 1 {
            self.held = Some(m);
        } else {
            out.extend(std::iter::repeat_n(m, copies));
        }
        out
    }

    /// A held message, sent unswapped.
    pub(crate) fn flush(&mut self) -> Option<Vec<u8>> {
        self.held.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(index: u32, counter: u64) -> Vec<u8> {
        let mut m = vec![0u8; 32];
        m[0] = 4;
        m[4..8].copy_from_slice(&index.to_le_bytes());
        m[8..16].copy_from_slice(&counter.to_le_bytes());
        m
    }

    fn counters(out: &[Vec<u8>]) -> Vec<u64> {
        out.iter().map(|m| transport(m).unwrap().1).collect()
    }

    #[test]
    fn drops_count_once_a_later_message_passed() {
        let mut s = State { how: Impairment { drop_every: 3, ..Default::default() }, ..Default::default() };
        let sent: Vec<u64> = (0..7).flat_map(|c| counters(&s.pass(msg(1, c)))).collect();
        assert_eq!(sent, [0, 1, 3, 4, 6]);
        assert_eq!(s.done.dropped, 2);
        // 8 is dropped as the last of session 1; session 2 does not confirm it.
        s.pass(msg(1, 7));
        s.pass(msg(1, 8));
        s.pass(msg(2, 0));
        assert_eq!(s.done.dropped, 2);
    }

    #[test]
    fn swaps_neighbours_of_one_session_and_duplicates() {
        let mut s = State { how: Impairment { swap_every: 2, ..Default::default() }, ..Default::default() };
        let sent: Vec<u64> = (0..6).flat_map(|c| counters(&s.pass(msg(1, c)))).collect();
        assert_eq!(sent, [0, 2, 1, 4, 3]);
        assert_eq!(s.done.swapped, 2);
        assert_eq!(counters(&s.pass(msg(2, 0))), [5, 0], "not swapped across sessions");
        assert_eq!(s.done.swapped, 2);
        let mut s = State { how: Impairment { duplicate_every: 2, ..Default::default() }, ..Default::default() };
        let sent: Vec<u64> = (0..4).flat_map(|c| counters(&s.pass(msg(1, c)))).collect();
        assert_eq!(sent, [0, 1, 1, 2, 3, 3]);
        assert_eq!(s.done.duplicated, 2);
    }
}
