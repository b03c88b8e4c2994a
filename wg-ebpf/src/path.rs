//! Path loss, reordering and duplicates per peer (wg_common::path): each transport message
//! that arrives on the underlay moves its session's window, under the session's lock, and
//! what it told is counted in the peer's per-CPU counters.

use aya_ebpf::programs::TcContext;
use wg_common::path::{PathCounts, RxSession};

use crate::{
    atomic::{compare_exchange, swap},
    latency::{direct, load},
    underlay::Datagram,
    INDICES, PEER_COUNTERS, RX_SESSIONS,
};

/// Tries at the lock before a message is counted unchecked. The lock is held for a few dozen
/// instructions in softirq, which nothing preempts: another CPU waits well under this, unless
/// the holder's (virtual) CPU is taken away. The verifier walks every try (each one more
/// costs the ingress program ~100 verified instructions: 4,096 tries made it 467k, too slow
/// to load under qemu's TCG), so this is kept small.
const SPINS: u32 = 256;

/// Segments of a GRO batch read one by one (UDP GRO makes at most 64).
const MAX_SEGMENTS: u32 = 64;

/// `n` transport messages (a GRO batch when more than one, `gso_size` bytes each) of the
/// session `index`, from the peer in `slot`.
///
/// What the messages tell is added straight to the peer's per-CPU counters (map memory, whose
/// values the verifier does not follow), not gathered on the stack first: counts on the stack
/// are constants to the verifier, which then sees every iteration of the batch loop in a
/// different state and walks them all (the 6.1 verifier took minutes under qemu).
#[inline(always)]
pub(crate) fn receive(ctx: &TcContext, d: &Datagram, slot: u32, index: u32, n: u64, gso_size: u32) {
    let Some(out) = counts(slot) else { return };
    let Some(s) = locked(slot) else {
        out.unchecked += n;
        return;
    };
    let seen = || INDICES.get_ptr(&index).is_some();
    match counter(ctx, d.msg) {
        Some(c) => s.receive(index, c, seen, out),
        None => out.unchecked += 1,
    }
    let mut i = 1;
    while i < n as u32 && i < MAX_SEGMENTS {
        let mut b = [0u8; 8];
        if load(ctx, d.msg + i * gso_size + 8, &mut b) {
            s.receive(index, u64::from_le_bytes(b), seen, out);
        } else {
            out.unchecked += 1;
        }
        i += 1;
    }
    if n > MAX_SEGMENTS as u64 {
        out.unchecked += n - MAX_SEGMENTS as u64;
    }
    unlock(s);
}

/// Settles the session of `slot` whose WireGuard session expired (the collector runs this
/// with BPF_PROG_TEST_RUN, see the program `wg_path_settle`).
#[inline(always)]
pub(crate) fn settle(slot: u32) {
    let Some(out) = counts(slot) else { return };
    if let Some(s) = locked(slot) {
        s.close(out);
        unlock(s);
    }
}

/// The peer's path counts on this CPU.
#[inline(always)]
fn counts(slot: u32) -> Option<&'static mut PathCounts> {
    // SAFETY: a per-CPU value, valid for this run, touched by this CPU only.
    PEER_COUNTERS.get_ptr_mut(slot).map(|c| unsafe { &mut (*c).path })
}

/// The session of `slot`, locked; `None` when the lock could not be had in [`SPINS`] tries.
#[inline(always)]
fn locked(slot: u32) -> Option<&'static mut RxSession> {
    let s = RX_SESSIONS.get_ptr_mut(slot)?;
    // SAFETY: an array value, valid for this run; `lock` is its first, 8-aligned field.
    let lock = unsafe { core::ptr::addr_of_mut!((*s).lock) };
    for _ in 0..SPINS {
        if compare_exchange(lock, 0, 1) == 0 {
            // SAFETY: the lock is ours: no other CPU touches the session until it is released.
            return Some(unsafe { &mut *s });
        }
    }
    None
}

#[inline(always)]
fn unlock(s: &mut RxSession) {
    swap(&mut s.lock, 0);
}

/// The message counter (bytes 8..16 of a transport message at `msg`): by direct access at
/// the usual offsets (untagged IPv4 without options, IPv6), else through the helper.
#[inline(always)]
fn counter(ctx: &TcContext, msg: u32) -> Option<u64> {
    let direct = match msg {
        42 => direct::<50, 8>(ctx),
        62 => direct::<70, 8>(ctx),
        _ => None,
    };
    if let Some(b) = direct {
        return Some(u64::from_le_bytes(*b));
    }
    let mut b = [0u8; 8];
    load(ctx, msg + 8, &mut b).then(|| u64::from_le_bytes(b))
}
