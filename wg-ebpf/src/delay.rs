//! Time a packet spends inside this host's WireGuard, per peer and direction:
//!
//! - encap: plaintext leaves the WireGuard interface (egress) → its data message leaves the
//!   underlay (egress);
//! - decap: a data message arrives on the underlay (ingress) → its plaintext arrives on the
//!   WireGuard interface (ingress).
//!
//! Encryption hides which message carries which packet, but WireGuard keeps a peer's packets
//! in order, so a FIFO of entry times per peer pairs them. What breaks the order is handled
//! so that one loss does not skew every later sample:
//! - keepalives (32-byte messages) have no plaintext twin: they take nothing from the FIFO;
//! - a packet WireGuard drops inside (no session yet, a full queue, a bad message) leaves an
//!   entry that no message will take: an entry whose size cannot be the message's (padding
//!   makes a message 32 + 0..15 bytes longer than its plaintext), or older than
//!   [`MAX_AGE_NS`], is given up and the next one tried;
//! - more packets inside than the FIFO holds: the oldest entry is pushed out and the message
//!   that belonged to it is let go without a sample (`orphans`), keeping the pairing.
//!
//! The FIFO is shared by all CPUs without locks: two CPUs sending to one peer at the same
//! instant can lose an entry, which the size and age rules then absorb.

use wg_common::latency::{fifo_key, stats, Fifo, FifoEntry, Kind, FIFO_LEN};

use crate::{latency, DELAY_FIFO};

/// An entry older than this is a packet that never came out (a dropped one), not a slow one.
pub(crate) const MAX_AGE_NS: u64 = 500_000_000;

/// Encap and decap tracking can be switched off at load time (`--latency.no-delay`): it reads
/// the clock for every packet.
#[unsafe(no_mangle)]
static DELAY_ENABLED: u32 = 1;

#[inline(always)]
pub(crate) fn enabled() -> bool {
    // SAFETY: a read-only global the loader may patch before load.
    unsafe { core::ptr::read_volatile(&DELAY_ENABLED) != 0 }
}

const EMPTY: Fifo =
    Fifo { head: 0, tail: 0, orphans: 0, _pad: 0, entries: [FifoEntry { t: 0, len: 0, count: 0 }; FIFO_LEN] };

/// A packet (or `count` GSO segments) of `len` bytes (0 = don't check sizes) went in.
#[inline(always)]
pub(crate) fn push(slot: u32, decap: bool, now: u64, len: u32, count: u32) {
    let key = fifo_key(slot, decap);
    let mut f = DELAY_FIFO.get_ptr_mut(&key);
    if f.is_none() {
        let _ = DELAY_FIFO.insert(&key, &EMPTY, 0);
        f = DELAY_FIFO.get_ptr_mut(&key);
    }
    let Some(f) = f else { return };
    // SAFETY: a value of a BPF_F_NO_PREALLOC hash, valid for this run (see the module doc on
    // concurrent writers).
    let f = unsafe { &mut *f };
    if f.tail.wrapping_sub(f.head) >= FIFO_LEN as u32 {
        let old = f.entries[(f.head as usize) % FIFO_LEN];
        f.orphans = f.orphans.wrapping_add(old.count);
        f.head = f.head.wrapping_add(1);
        latency::stat(stats::FIFO_OVERFLOW);
    }
    f.entries[(f.tail as usize) % FIFO_LEN] = FifoEntry { t: now, len, count };
    f.tail = f.tail.wrapping_add(1);
}

/// `count` packets came out, of `len` bytes (the plaintext, or the message's padded
/// plaintext; 0 = don't check): each takes the oldest entry's time, one sample per packet.
#[inline(always)]
pub(crate) fn pop(slot: u32, decap: bool, now: u64, len: u32, count: u32) {
    let Some(f) = DELAY_FIFO.get_ptr_mut(&fifo_key(slot, decap)) else { return };
    // SAFETY: see `push`.
    let f = unsafe { &mut *f };
    let kind = if decap { Kind::Decap } else { Kind::Encap } as u16;
    let mut left = count;
    let let_go = core::cmp::min(f.orphans, left);
    f.orphans -= let_go;
    left -= let_go;
    // A few entries at most: a GSO batch usually meets the batch that went in, and an entry
    // given up is rare. What is left after that goes without a sample.
    for _ in 0..4 {
        if left == 0 || f.head == f.tail {
            return;
        }
        let i = (f.head as usize) % FIFO_LEN;
        let e = f.entries[i];
        let stale = now.saturating_sub(e.t) > MAX_AGE_NS || now < e.t;
        let mismatched = count == 1 && e.len != 0 && len != 0 && !sizes_match(e.len, len, decap);
        if stale || mismatched {
            f.head = f.head.wrapping_add(1);
            latency::stat(stats::FIFO_RESYNC);
            continue;
        }
        let n = core::cmp::min(left, e.count);
        latency::record_n(slot, kind, now - e.t, n as u64);
        left -= n;
        if e.count > n {
            f.entries[i].count = e.count - n;
        } else {
            f.head = f.head.wrapping_add(1);
        }
    }
}

/// Whether a plaintext of one size and a data message's padded plaintext of the other can
/// be the same packet: padded is plaintext rounded up to 16 (not past the MTU).
#[inline(always)]
fn sizes_match(entry: u32, now: u32, decap: bool) -> bool {
    let (plain, padded) = if decap { (now, entry) } else { (entry, now) };
    padded >= plain && padded - plain < 16
}
