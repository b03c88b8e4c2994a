//! Tunnel round trips seen from the plaintext side: a packet leaves for a peer (egress),
//! its answer comes back from that peer (ingress), and the time between is one sample in the
//! peer's histogram. Three ways to know an answer, as passive ping tools do:
//!
//! - TCP timestamps: the first TSecr echoing a TSval we sent;
//! - TCP SYN → SYN-ACK: the SYN-ACK acknowledging our SYN's sequence number;
//! - ICMP/ICMPv6 echo request → reply with the same identifier and sequence number.
//!
//! Only packets that can be matched read the clock or touch the pending map. Headers past the
//! IP header are read with `bpf_skb_load_bytes` into the stack: their offsets vary (IPv4
//! options, IPv6 extension headers), which direct access cannot follow cheaply.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use wg_common::{
    buckets::bucket_of,
    latency::{stats, HistKey, HistValue, Kind, PendingEntry, PendingKey, PENDING_KEY_WORDS},
    DEFAULT_MAX_PENDING, DIR_RX,
};

use crate::{zeroed, Addr, Buf, Ip, LATENCY_HIST, LATENCY_STATS, PENDING, PROTO_TCP};

pub(crate) const PROTO_ICMP: u8 = 1;
pub(crate) const PROTO_ICMPV6: u8 = 58;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;

/// One packet in `mask + 1` becomes a sample: 0 = every packet. Set by the collector at
/// load time (`--latency.sample`).
#[unsafe(no_mangle)]
static LATENCY_SAMPLE_MASK: u32 = 0;

#[inline(always)]
fn sample_mask() -> u32 {
    // SAFETY: a read-only global the loader may patch before load.
    unsafe { core::ptr::read_volatile(&LATENCY_SAMPLE_MASK) }
}

/// Whether a question is recorded (and its answer looked for): its matching value (TSval,
/// sequence) has the mask's bits clear, so a retransmission is asked again or not at all, as
/// the first copy was, and an answer, which echoes the value, knows without the table.
#[inline(always)]
fn sampled(value: u32) -> bool {
    value & sample_mask() == 0
}

/// Whether a packet entering WireGuard is timed for its encap/decap delay: at random (its
/// bytes have no sequence to pick by on every path). With the default mask (0, known to the
/// verifier) this is a constant true and costs nothing.
#[inline(always)]
pub(crate) fn sampled_at_random() -> bool {
    let mask = sample_mask();
    // SAFETY: a helper without arguments.
    mask == 0 || unsafe { bpf_get_prandom_u32() } & mask == 0
}

/// The time, read at most once per packet (the clock costs ~25 ns).
pub(crate) struct Clock(core::cell::Cell<u64>);

impl Clock {
    #[inline(always)]
    pub(crate) const fn new() -> Self {
        Self(core::cell::Cell::new(0))
    }

    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        if self.0.get() == 0 {
            // SAFETY: a helper without arguments.
            self.0.set(unsafe { bpf_ktime_get_ns() });
        }
        self.0.get()
    }
}

#[inline(always)]
pub(crate) fn stat(i: u32) {
    if let Some(c) = LATENCY_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU value.
        unsafe { *c += 1 };
    }
}

/// `N` bytes at the constant offset `OFF` by direct packet access, if the linear part of the
/// skb holds them: no helper call. Callers fall back to [`load`] when it does not.
#[inline(always)]
pub(crate) fn direct<const OFF: usize, const N: usize>(ctx: &TcContext) -> Option<&[u8; N]> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + OFF + N > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; [u8; N] has alignment 1.
    Some(unsafe { &*((start + OFF) as *const [u8; N]) })
}

/// The four bytes at `OFF` of `p` (packet memory [`direct`] gave out) in one load, as the
/// word they are in memory (`u32::from_ne_bytes`). Written out because LLVM loads a `[u8]`,
/// alignment 1, a byte at a time (four loads, three shifts, three ors a word: the underlay's
/// addresses, ports and message head were a third of its instructions). The packet need not
/// be 4-aligned: the verifier allows unaligned packet access where the CPU does it cheaply
/// (x86-64, arm64: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS).
#[inline(always)]
pub(crate) fn word<const OFF: usize, const N: usize>(p: &[u8; N]) -> u32 {
    const { assert!(OFF + 4 <= N) };
    let v: u32;
    // SAFETY: reads 4 bytes inside `p` (asserted above), nothing else.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + {off})",
            p = in(reg) p.as_ptr(),
            off = const OFF,
            v = lateout(reg) v,
            options(readonly, nostack, preserves_flags)
        )
    };
    v
}

/// Reads `N` bytes at `off` into `buf` (a stack array; returned by reference rather than in an
/// Option, which LLVM may pack into registers in ways the verifier refuses).
#[inline(always)]
pub(crate) fn load<const N: usize>(ctx: &TcContext, off: u32, buf: &mut [u8; N]) -> bool {
    // SAFETY: the helper writes at most N bytes into buf.
    unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off, buf.as_mut_ptr() as *mut _, N as u32) == 0 }
}

/// The transport header's offset and protocol: IPv4 after its IHL; IPv6 after the extension
/// headers that may precede it (hop-by-hop, routing, destination options, AH; at most four).
/// A fragment is not followed (its transport header may be elsewhere).
#[inline(always)]
fn transport(ctx: &TcContext, ip: &Ip) -> Option<(u32, u8)> {
    let (mut off, mut next) = (ip.hdr_len, ip.proto);
    if let Addr::V6(_) = ip.addr {
        for _ in 0..4 {
            match next {
                0 | 43 | 60 => {
                    let mut h = [0u8; 2];
                    if !load(ctx, off, &mut h) {
                        return None;
                    }
                    next = h[0];
                    off += (h[1] as u32 + 1) * 8;
                }
                51 => {
                    let mut h = [0u8; 2];
                    if !load(ctx, off, &mut h) {
                        return None;
                    }
                    next = h[0];
                    off += (h[1] as u32 + 2) * 4;
                }
                _ => break,
            }
        }
    }
    Some((off, next))
}

/// Fills the key's addresses from the packet (source and destination, in the key's order
/// for the direction), IPv4 ones mapped into IPv6 (::ffff:a.b.c.d).
#[inline(always)]
fn addresses<const DIR: usize>(ctx: &TcContext, ip: &Ip, k: &mut PendingKey) -> bool {
    // The packet's source is the remote end on ingress, the local end on egress.
    let (src, dst) = if DIR == DIR_RX { (&mut k.remote, &mut k.local) } else { (&mut k.local, &mut k.remote) };
    match ip.addr {
        Addr::V4(_) => {
            let mut a = [0u8; 8];
            match direct::<12, 8>(ctx) {
                Some(d) => a = *d,
                None if load(ctx, 12, &mut a) => {}
                None => return false,
            }
            src[10] = 0xff;
            src[11] = 0xff;
            dst[10] = 0xff;
            dst[11] = 0xff;
            src[12..16].copy_from_slice(&a[0..4]);
            dst[12..16].copy_from_slice(&a[4..8]);
            true
        }
        Addr::V6(_) => match direct::<8, 32>(ctx) {
            Some(d) => {
                src.copy_from_slice(&d[..16]);
                dst.copy_from_slice(&d[16..]);
                true
            }
            None => load(ctx, 8, src) && load(ctx, 24, dst),
        },
    }
}

/// Finds the timestamp option in a TCP header's options: (TSval, TSecr).
///
/// Walks at most 8 options: enough for every layout stacks send (Linux: NOP NOP TS, or MSS
/// SACK_PERM TS on a SYN; BSD and Windows: MSS NOP WS NOP NOP TS), and few enough that the
/// verifier's walk of the unrolled loop stays small.
#[inline(always)]
fn timestamps(opts: &[u8; 48], len: usize) -> Option<(u32, u32)> {
    let mut i = 0usize;
    for _ in 0..8 {
        if i + 10 > len || i > 30 {
            return None;
        }
        // Masked so that even an older verifier (6.1), which loses the bound above on the
        // copy it checks, sees the offset stay inside the buffer.
        let j = core::hint::black_box(i) & 31;
        match opts[j] {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => i += 1,
            TCPOPT_TIMESTAMP => {
                if opts[j + 1] != 10 {
                    return None;
                }
                let w = |k: usize| u32::from_be_bytes([opts[j + k], opts[j + k + 1], opts[j + k + 2], opts[j + k + 3]]);
                return Some((w(2), w(6)));
            }
            _ => {
                let olen = opts[j + 1] as usize;
                if olen < 2 {
                    return None;
                }
                i = j + olen;
            }
        }
    }
    None
}

/// Notes a packet that may be matched by its answer, or matches an answer to a packet.
#[inline(always)]
pub(crate) fn track<const DIR: usize>(ctx: &TcContext, ip: &Ip, slot: u32, clock: &Clock) {
    let Some((l4, proto)) = transport(ctx, ip) else { return };
    match proto {
        PROTO_TCP => tcp::<DIR>(ctx, ip, l4, slot, clock),
        PROTO_ICMP if matches!(ip.addr, Addr::V4(_)) => icmp::<DIR>(ctx, ip, l4, slot, 8, 0, clock),
        PROTO_ICMPV6 if matches!(ip.addr, Addr::V6(_)) => icmp::<DIR>(ctx, ip, l4, slot, 128, 129, clock),
        _ => {}
    }
}

/// The pending key of a packet, made in `space`, addresses left for [`addresses`]: on egress
/// as it is, on ingress turned round, so an answer finds the key its question left.
#[inline(always)]
fn key<const DIR: usize>(space: &mut MaybeUninit<PendingKey>, sport: u16, dport: u16) -> &mut PendingKey {
    let k = zeroed(space);
    (k.local_port, k.remote_port) = if DIR == DIR_RX { (dport, sport) } else { (sport, dport) };
    k
}

#[inline(always)]
fn tcp<const DIR: usize>(ctx: &TcContext, ip: &Ip, l4: u32, slot: u32, clock: &Clock) {
    // The header and the first 12 option bytes, directly where the IP header has its plain
    // size (IPv4 without options, IPv6 without extension headers), else by helper.
    let fast = match (l4, &ip.addr) {
        (20, Addr::V4(_)) => direct::<20, 32>(ctx),
        (40, Addr::V6(_)) => direct::<40, 32>(ctx),
        _ => None,
    };
    let mut slow = MaybeUninit::uninit();
    let h: &[u8; 32] = match fast {
        Some(d) => d,
        None => {
            let slow = &mut zeroed::<Buf<32>>(&mut slow).0;
            let mut fixed = MaybeUninit::uninit();
            let fixed = &mut zeroed::<Buf<20>>(&mut fixed).0;
            if !load(ctx, l4, fixed) {
                return;
            }
            slow[..20].copy_from_slice(fixed);
            slow
        }
    };
    let sport = u16::from_be_bytes([h[0], h[1]]);
    let dport = u16::from_be_bytes([h[2], h[3]]);
    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    let optlen = (((h[12] >> 4) as usize) * 4).saturating_sub(20);
    let flags = h[13];
    let mut ts = None;
    if fast.is_some()
        && optlen >= 12
        && h[20] == TCPOPT_NOP
        && h[21] == TCPOPT_NOP
        && h[22] == TCPOPT_TIMESTAMP
        && h[23] == 10
    {
        // What Linux puts on every segment but the SYN: NOP NOP TS.
        let w = |k: usize| u32::from_be_bytes([h[k], h[k + 1], h[k + 2], h[k + 3]]);
        ts = Some((w(24), w(28)));
    } else if optlen > 0 {
        // Any other layout: the options are read in one of three fixed sizes (the verifier
        // wants a constant length): 40 bytes when the packet has them, else 20 (a SYN's
        // usual options), else 12.
        let avail = ctx.len().saturating_sub(l4 + 20);
        // 48 bytes, of which the options fill at most 40: the parser's masked offsets stay
        // inside whatever it reads.
        let mut opts = MaybeUninit::uninit();
        let opts = &mut zeroed::<Buf<48>>(&mut opts).0;
        // The walk reads only what was loaded: options the header claims beyond it (a
        // packet cut short, or options longer than the size the packet allowed) are not
        // looked at, rather than read as zeros.
        let (loaded, read) = if avail >= 40 {
            let mut b = MaybeUninit::uninit();
            let b = &mut zeroed::<Buf<40>>(&mut b).0;
            let ok = load(ctx, l4 + 20, b);
            opts[..40].copy_from_slice(b);
            (ok, 40)
        } else if avail >= 20 {
            let mut b = MaybeUninit::uninit();
            let b = &mut zeroed::<Buf<20>>(&mut b).0;
            let ok = load(ctx, l4 + 20, b);
            opts[..20].copy_from_slice(b);
            (ok, 20)
        } else if avail >= 12 {
            let mut b = MaybeUninit::uninit();
            let b = &mut zeroed::<Buf<12>>(&mut b).0;
            let ok = load(ctx, l4 + 20, b);
            opts[..12].copy_from_slice(b);
            (ok, 12)
        } else {
            (false, 0)
        };
        if loaded {
            ts = timestamps(opts, core::cmp::min(optlen, read));
        }
    }
    let syn = flags & TCP_SYN != 0;
    let is_ack = flags & TCP_ACK != 0;
    let mut k = MaybeUninit::uninit();
    if DIR == DIR_RX {
        // Answers: a SYN-ACK for our SYN, a TSecr for our TSval; only to questions that were
        // asked (sampled by the value the answer echoes), so the others skip the table.
        let syn_ack = syn && is_ack && sampled(ack.wrapping_sub(1));
        let ecr = match ts {
            Some((_, ecr)) => ecr,
            None => 0,
        };
        // Tested apart from the match: inside it, LLVM's code shifted a register that held a
        // stack pointer on the path without timestamps, which the verifier refuses ("pointer
        // arithmetic with <<= operator prohibited").
        let ecr = if ecr != 0 && sampled(ecr) { ecr } else { 0 };
        if !syn_ack && ecr == 0 {
            return;
        }
        let k = key::<DIR>(&mut k, sport, dport);
        if !addresses::<DIR>(ctx, ip, k) {
            return;
        }
        if syn_ack {
            k.kind = Kind::TcpSyn as u16;
            k.value = ack.wrapping_sub(1);
            answer(k, slot, Kind::TcpSyn, || clock.now());
        }
        if ecr != 0 {
            k.kind = Kind::TcpTs as u16;
            k.value = ecr;
            answer(k, slot, Kind::TcpTs, || clock.now());
        }
    } else {
        // Questions: our SYN, our TSval (the first packet that carries it).
        let record_syn = syn && !is_ack && sampled(seq);
        let val = match ts {
            Some((val, _)) if sampled(val) => Some(val),
            _ => None,
        };
        if !record_syn && val.is_none() {
            return;
        }
        let k = key::<DIR>(&mut k, sport, dport);
        if !addresses::<DIR>(ctx, ip, k) {
            return;
        }
        if record_syn {
            k.kind = Kind::TcpSyn as u16;
            k.value = seq;
            question(k, || clock.now());
        }
        if let Some(val) = val {
            k.kind = Kind::TcpTs as u16;
            k.value = val;
            question(k, || clock.now());
        }
    }
}

#[inline(always)]
fn icmp<const DIR: usize>(ctx: &TcContext, ip: &Ip, l4: u32, slot: u32, request: u8, reply: u8, clock: &Clock) {
    let mut h = [0u8; 8];
    if !load(ctx, l4, &mut h) {
        return;
    }
    let id_seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let wanted = if DIR == DIR_RX { reply } else { request };
    if h[0] != wanted || h[1] != 0 {
        return;
    }
    // A reply echoes its request's identifier and sequence: answers only what was asked.
    if !sampled(id_seq) {
        return;
    }
    let mut k = MaybeUninit::uninit();
    let k = key::<DIR>(&mut k, 0, 0);
    if !addresses::<DIR>(ctx, ip, k) {
        return;
    }
    k.kind = Kind::Icmp as u16;
    k.value = id_seq;
    if DIR == DIR_RX {
        answer(k, slot, Kind::Icmp, || clock.now());
    } else {
        question(k, || clock.now());
    }
}

/// The pending table's size − 1 (a power of two): set by the collector at load time
/// (`--latency.max-pending`), as the map's size is.
#[unsafe(no_mangle)]
static PENDING_MASK: u32 = DEFAULT_MAX_PENDING - 1;

/// The place of the pending table where `k` waits, or would.
#[inline(always)]
fn place(k: &PendingKey) -> Option<&'static mut PendingEntry> {
    // SAFETY: a read-only global the loader may patch before load.
    let mask = unsafe { core::ptr::read_volatile(&PENDING_MASK) };
    // SAFETY: an array value, valid for the program's run; shared with other CPUs and the
    // collector, which is why `sent` is read and written whole (volatile) and taken by an
    // atomic exchange.
    PENDING.get_ptr_mut(k.place() & mask).map(|e| unsafe { &mut *e })
}

/// Whole-key equality, a word at a time.
#[inline(always)]
fn same(a: &PendingKey, b: &PendingKey) -> bool {
    let (a, b) = (a.words(), b.words());
    let mut diff = 0;
    for i in 0..PENDING_KEY_WORDS {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

/// Remembers when a question left, unless the same question is already waiting (a TSval
/// repeats on every packet sent within one timestamp tick: the first one counts). `now` is
/// asked only for a new question: the clock costs ~25 ns. A question waiting at the same
/// place gives way (`displaced`): the newer one is likelier to be answered.
#[inline(always)]
pub(crate) fn question(k: &PendingKey, now: impl FnOnce() -> u64) {
    let Some(e) = place(k) else { return };
    let taken = unsafe { core::ptr::read_volatile(&e.sent) } != 0;
    if taken && same(&e.key, k) {
        return;
    }
    let now = now();
    if taken {
        stat(stats::DISPLACED);
    }
    // The key first, then the time that makes the place count. Two CPUs writing one place
    // at the same instant may leave one's key with the other's time: a rare wrong pairing
    // that no answer will match, which expires.
    e.key = *k;
    // SAFETY: a plain aligned 8-byte store is one instruction.
    unsafe { core::ptr::write_volatile(&mut e.sent, now) };
    stat(stats::RECORDED);
}

/// Closes a question: one sample, and the place is freed (only the first answer counts).
/// `now` is asked only when a question waits (most ACKs repeat an echo already answered).
#[inline(always)]
pub(crate) fn answer(k: &PendingKey, slot: u32, kind: Kind, now: impl FnOnce() -> u64) {
    let Some(e) = place(k) else { return };
    if unsafe { core::ptr::read_volatile(&e.sent) } == 0 || !same(&e.key, k) {
        return;
    }
    // Whoever swaps the time out takes the sample (another CPU with the same answer, or
    // the collector expiring it, finds 0), so an answer seen twice counts once.
    let sent = crate::atomic::swap(&mut e.sent, 0);
    let now = now();
    if sent == 0 || now < sent {
        return;
    }
    stat(stats::MATCHED);
    record(slot, kind as u16, now - sent);
}

/// Adds a sample to a peer's histogram.
#[inline(always)]
pub(crate) fn record(slot: u32, kind: u16, ns: u64) {
    record_n(slot, kind, ns, 1)
}

/// Adds `n` samples of the same value (the segments of one GSO batch).
#[inline(always)]
pub(crate) fn record_n(slot: u32, kind: u16, ns: u64, n: u64) {
    let key = HistKey { slot, kind, bucket: bucket_of(ns) };
    for _ in 0..2 {
        if let Some(v) = LATENCY_HIST.get_ptr_mut(&key) {
            // SAFETY: a per-CPU value.
            unsafe {
                (*v).count += n;
                (*v).sum_ns += ns * n;
            }
            return;
        }
        if LATENCY_HIST.insert(&key, &HistValue { count: n, sum_ns: ns * n }, BPF_NOEXIST as u64).is_ok() {
            return;
        }
        // Inserted meanwhile from another CPU (then the lookup finds it), or full.
    }
    stat(stats::HIST_FULL);
}
