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
//! - Hold each one longer than the relay's delay by a spread ([`Jitter`]): the latency
//!   tests' known distribution. Datagrams stay in order (one waits behind a later-due one),
//!   so a spread wider than the gap between messages skews it; the tests space them wider.

use std::{collections::HashMap, time::Duration};

use anyhow::{ensure, Result};

use crate::{relay::Toward, Collector, Lab, Metrics};

/// Every k-th transport message (0: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    pub drop_every: u64,
    pub swap_every: u64,
    pub duplicate_every: u64,
    pub jitter: Jitter,
}

/// Extra time a transport message is held, beyond the relay's delay.
#[derive(Clone, Copy, Debug, Default)]
pub enum Jitter {
    #[default]
    None,
    /// Uniform over [0, max), from a fixed-seed xorshift (the same run every time).
    Uniform { max: Duration },
    /// `high` for every k-th message, `low` for the others.
    Bimodal { low: Duration, high: Duration, high_every: u64 },
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
    /// Transport messages seen by [`State::jitter`], and its xorshift state.
    jittered: u64,
    random: u64,
}

/// A WireGuard transport message: (receiver index, counter).
fn transport(m: &[u8]) -> Option<(u32, u64)> {
    (m.len() >= 32 && m[..4] == [4, 0, 0, 0])
        .then(|| (u32::from_le_bytes(m[4..8].try_into().unwrap()), u64::from_le_bytes(m[8..16].try_into().unwrap())))
}

impl State {
    /// How much longer than the relay's delay to hold `m`.
    pub(crate) fn jitter(&mut self, m: &[u8]) -> Duration {
        if transport(m).is_none() {
            return Duration::ZERO;
        }
        self.jittered += 1;
        match self.how.jitter {
            Jitter::None => Duration::ZERO,
            Jitter::Uniform { max } => {
                let x = if self.random == 0 { 0x9e37_79b9_7f4a_7c15 } else { self.random };
                let x = x ^ (x << 13);
                let x = x ^ (x >> 7);
                self.random = x ^ (x << 17);
                max.mul_f64((self.random >> 11) as f64 / (1u64 << 53) as f64)
            }
            Jitter::Bimodal { low, high, high_every } => {
                if high_every > 0 && self.jittered.is_multiple_of(high_every) {
                    high
                } else {
                    low
                }
            }
        }
    }

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

/// What the relay did to b's messages to a, and what the collector on a counted meanwhile:
/// lost, reordered, duplicate.
#[derive(Debug)]
pub struct Outcome {
    pub done: Impaired,
    pub counted: [f64; 3],
}

/// With `lab` (made [`Lab::with_delay`]) and a collector on side a: the relay treats b's
/// transport messages to a as `how` says while a pings b `pings` times, forces a handshake
/// (a new session), pings as many again, then stops and forces another handshake, which
/// settles the second session's window. The replies are b's messages.
pub fn over_two_sessions(lab: &Lab, c: &Collector, how: Impairment, pings: u32) -> Result<Outcome> {
    let before = path(&c.scrape()?, lab);
    let relay = lab.relay()?;
    relay.impair(Toward::A, how);
    ping(lab, pings);
    rekey(lab)?;
    ping(lab, pings);
    relay.impair(Toward::A, Impairment::default());
    rekey(lab)?;
    std::thread::sleep(Duration::from_millis(200));
    let after = path(&c.scrape()?, lab);
    let initiations = after[3] - before[3];
    ensure!(initiations >= 2.0, "two handshakes, so three sessions: {initiations} initiations");
    Ok(Outcome { done: relay.impaired(Toward::A), counted: [0, 1, 2].map(|i| after[i] - before[i]) })
}

/// Lost, reordered, duplicate for b on a; and the handshakes a initiated.
fn path(m: &Metrics, lab: &Lab) -> [f64; 4] {
    let l = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())];
    let [lost, reordered, duplicate] = ["lost", "reordered", "duplicate"]
        .map(|what| m.get_or_zero(&format!("wireguard_peer_{what}_messages_total"), &l));
    let initiations = m.get_or_zero(
        "wireguard_messages_total",
        &[l[0], l[1], ("direction", "transmit"), ("type", "handshake_initiation")],
    );
    [lost, reordered, duplicate, initiations]
}

/// `n` pings from a to b, 5 ms apart. Some are lost on purpose: ping's verdict is not asked.
fn ping(lab: &Lab, n: u32) {
    let _ =
        lab.exec('a', "ping", &["-q", "-c", &n.to_string(), "-i", "0.005", "-W", "1", &lab.b.tunnel_v4.to_string()]);
}

/// a forgets its session with b: its next ping starts a handshake (a initiates with a new
/// index, and b's data to it starts at counter 0).
fn rekey(lab: &Lab) -> Result<()> {
    lab.reset_peer('a')?;
    ping(lab, 3);
    Ok(())
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
