//! The eBPF atomic instructions the programs use (kernel 5.12), written out because the BPF
//! target declares no atomics (no `AtomicU64::swap`), and building everything for cpu v3,
//! which would let LLVM emit them, changes code elsewhere that the verifier then refuses.
//! Both are full barriers, and as `asm!` without `nomem` they are compiler barriers too.

/// Swaps `new` into `*v` atomically and returns what was there: BPF_XCHG.
#[inline(always)]
pub(crate) fn swap(v: *mut u64, new: u64) -> u64 {
    let mut old = new;
    // SAFETY: the callers pass a valid, 8-aligned u64 of a map value; the instruction reads
    // and writes only it.
    unsafe { core::arch::asm!("{old} = xchg_64({v} + 0, {old})", v = in(reg) v, old = inout(reg) old) };
    old
}

/// Stores `new` in `*v` if it holds `expected`; returns what it held: BPF_CMPXCHG (which
/// compares with and returns in r0).
#[inline(always)]
pub(crate) fn compare_exchange(v: *mut u64, expected: u64, new: u64) -> u64 {
    let mut r0 = expected;
    // SAFETY: as for `swap`.
    unsafe {
        core::arch::asm!("r0 = cmpxchg_64({v} + 0, r0, {new})", v = in(reg) v, new = in(reg) new, inout("r0") r0)
    };
    r0
}
