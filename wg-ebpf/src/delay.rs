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
//!   [`FifoEntry::MAX_AGE_NS`], is given up and the next one tried;
//! - more packets (or GSO batches) inside than the FIFO holds ([`FIFO_LEN`]): the oldest entry
//!   is pushed out and the message that belonged to it is let go without a sample
//!   (`orphans`), keeping the pairing.
//!
//! The FIFO is shared by all CPUs without locks: two CPUs sending to one peer at the same
//! instant can lose an entry, which the size and age rules then absorb.
//!
//! With `--latency.sample N` one packet in N (at random) is timed; the others go in untimed
//! ([`FifoEntry::untimed`]) and keep the order without reading the clock on either side or
//! touching the histogram. Untimed packets of one size in a row share an entry (a run): a
//! burst to one peer (sendmmsg, a TCP window) then takes an entry per timed packet and one
//! per run between, where an entry per packet overflowed the FIFO and lost most of the burst's
//! samples (BENCHMARKS.md). A packet WireGuard drops inside a run is not seen by its size (the
//! run's are all one size); a timed entry behind it is then paired one packet late, or given
//! up by its own size.

use wg_common::latency::{fifo_key, stats, Fifo, FifoEntry, Kind, FIFO_LEN};

use crate::{
    latency::{self, Clock},
    DELAY_FIFO,
};

/// Encap and decap tracking can be switched off at load time (`--latency.no-delay`): it reads
/// the clock for every packet.
#[unsafe(no_mangle)]
static DELAY_ENABLED: u32 = 1;

#[inline(always)]
pub(crate) fn enabled() -> bool {
    // SAFETY: a read-only global the loader may patch before load.
    unsafe { core::ptr::read_volatile(&DELAY_ENABLED) != 0 }
}

/// The FIFO of a peer and direction: an array value (one cache line, see [`FIFO_LEN`]),
/// shared by all CPUs without locks. A head or count no single writer could leave (two CPUs
/// interleaved) empties it: the packets inside then come out without samples.
#[inline(always)]
fn fifo(slot: u32, decap: bool) -> Option<&'static mut Fifo> {
    // SAFETY: an array value, valid for this run (see the module doc on concurrent writers).
    let f = unsafe { &mut *DELAY_FIFO.get_ptr_mut(fifo_key(slot, decap))? };
    if f.head as usize >= FIFO_LEN || f.used as usize > FIFO_LEN {
        (f.head, f.used) = (0, 0);
    }
    Some(f)
}

/// The place `n` entries after `i` (both < FIFO_LEN): a compare instead of a division.
#[inline(always)]
fn after(i: u8, n: u8) -> usize {
    let j = i as usize + n as usize;
    if j >= FIFO_LEN {
        j - FIFO_LEN
    } else {
        j
    }
}

/// A packet (or `count` GSO segments) of `len` bytes (0 = don't check sizes) went in; timed
/// (reading `clock`) if sampled, else joining the run of untimed packets of its size at the
/// FIFO's end, if there is one.
#[inline(always)]
pub(crate) fn push(slot: u32, decap: bool, clock: &Clock, len: u32, count: u32) {
    let Some(f) = fifo(slot, decap) else { return };
    // Constant true with the default mask: the run below is then left out by the verifier.
    let timed = latency::sampled_at_random();
    if !timed && f.used > 0 {
        if let Some(e) = f.entries.get_mut(after(f.head, f.used - 1)) {
            if let Some(run) = e.joined(len, count) {
                *e = run;
                return;
            }
        }
    }
    if f.used as usize >= FIFO_LEN {
        if let Some(old) = f.entries.get(f.head as usize) {
            f.orphans = f.orphans.wrapping_add(old.count());
        }
        f.head = after(f.head, 1) as u8;
        f.used -= 1;
        latency::stat(stats::FIFO_OVERFLOW);
    }
    if let Some(e) = f.entries.get_mut(after(f.head, f.used)) {
        *e = if timed { FifoEntry::new(clock.now(), len, count) } else { FifoEntry::untimed(len, count) };
        f.used += 1;
    }
}

/// `count` packets came out, of `len` bytes (the plaintext, or the message's padded
/// plaintext; 0 = don't check): each takes the oldest entry's time, one sample per packet of
/// a timed entry (`clock` is read only for those).
#[inline(always)]
pub(crate) fn pop(slot: u32, decap: bool, clock: &Clock, len: u32, count: u32) {
    let Some(f) = fifo(slot, decap) else { return };
    let kind = if decap { Kind::Decap } else { Kind::Encap } as u16;
    let mut left = count;
    let let_go = core::cmp::min(f.orphans, left);
    f.orphans -= let_go;
    left -= let_go;
    // A few entries at most: a GSO batch usually meets the batch that went in, and an entry
    // given up is rare. What is left after that goes without a sample.
    for _ in 0..4 {
        if left == 0 || f.used == 0 {
            return;
        }
        let Some(e) = f.entries.get_mut(f.head as usize) else { return };
        let mismatched = count == 1 && e.size() != 0 && len != 0 && !sizes_match(e.size(), len, decap);
        let n = core::cmp::min(left, e.count());
        // An untimed entry is paired by its size alone (its age unknown).
        let age = if e.timed() { e.age(clock.now()) } else { 0 };
        if age <= FifoEntry::MAX_AGE_NS && !mismatched {
            if e.timed() {
                latency::record_n(slot, kind, age, n as u64);
            }
            left -= n;
            if e.count() > n {
                *e = e.with_count(e.count() - n);
                continue;
            }
        } else {
            latency::stat(stats::FIFO_RESYNC);
        }
        f.head = after(f.head, 1) as u8;
        f.used -= 1;
    }
}

/// Whether a plaintext of one size and a data message's padded plaintext of the other can
/// be the same packet: padded is plaintext rounded up to 16 (not past the MTU).
#[inline(always)]
fn sizes_match(entry: u32, now: u32, decap: bool) -> bool {
    let (plain, padded) = if decap { (now, entry) } else { (entry, now) };
    padded >= plain && padded - plain < 16
}
