//! TC programs on a WireGuard interface (plaintext side).
//!
//! The interface is L3: data starts at the IP header. Each packet is given to the peer
//! whose allowed IPs contain its source address (ingress, received from the peer) or its
//! destination address (egress, sent to the peer), through LPM tries that the collector
//! keeps in sync with WireGuard's own configuration. WireGuard routes and filters by
//! exactly these prefixes, so the match is the peer.
//!
//! Both programs only observe: they return TC_NEXT whatever happens.
#![no_std]
#![no_main]
// BPF_XCHG by hand (see latency::take).
#![feature(asm_experimental_arch)]

mod atomic;
mod delay;
mod latency;
mod path;
mod underlay;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use wg_common::{
    maps::{self, Key as MapKey, Value},
    unattributed_index, Unattributed, DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_HIST_ENTRIES, DEFAULT_MAX_PEERS,
    DEFAULT_MAX_PENDING, DIR_RX, DIR_TX, HOST_BLOCK_ENTRIES, TC_NEXT, UNATTRIBUTED_ENTRIES,
};

#[map(name = "HOSTS_V4")]
static HOSTS_V4: HashMap<MapKey<maps::HostsV4>, Value<maps::HostsV4>> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOWED_IPS, BPF_F_NO_PREALLOC);

#[map(name = "HOST_BLOCK_V4")]
static HOST_BLOCK_V4: Array<Value<maps::HostBlockV4>> = Array::with_max_entries(HOST_BLOCK_ENTRIES, 0);

#[map(name = "HOST_BLOCK_AT")]
static HOST_BLOCK_AT: Array<Value<maps::HostBlockAt>> = Array::with_max_entries(1, 0);

#[map(name = "HOSTS_V6")]
static HOSTS_V6: HashMap<MapKey<maps::HostsV6>, Value<maps::HostsV6>> =
    HashMap::with_max_entries(DEFAULT_MAX_ALLOWED_IPS, BPF_F_NO_PREALLOC);

#[map(name = "PEERS_V4")]
static PEERS_V4: LpmTrie<MapKey<maps::PeersV4>, Value<maps::PeersV4>> =
    LpmTrie::with_max_entries(DEFAULT_MAX_ALLOWED_IPS, 0);

#[map(name = "PEERS_V6")]
static PEERS_V6: LpmTrie<MapKey<maps::PeersV6>, Value<maps::PeersV6>> =
    LpmTrie::with_max_entries(DEFAULT_MAX_ALLOWED_IPS, 0);

#[map(name = "PEER_COUNTERS")]
static PEER_COUNTERS: PerCpuArray<Value<maps::PeerCounters>> = PerCpuArray::with_max_entries(DEFAULT_MAX_PEERS, 0);

#[map(name = "UNATTRIBUTED")]
static UNATTRIBUTED: PerCpuArray<Value<maps::Unattributed>> = PerCpuArray::with_max_entries(UNATTRIBUTED_ENTRIES, 0);

/// Packets waiting for their answer, each at the place its key hashes to (see
/// wg_common::latency::PendingEntry): an array lookup the verifier inlines, where a hash of a
/// 44-byte key cost ~45 ns on every TCP segment. Mmapable, so the collector can expire
/// questions with a compare-and-swap on the shared memory.
#[map(name = "PENDING")]
static PENDING: Array<Value<maps::Pending>> = Array::with_max_entries(DEFAULT_MAX_PENDING, BPF_F_MMAPABLE);

/// Latency histograms: (peer slot, kind, bucket) → count and sum.
#[map(name = "LATENCY_HIST")]
static LATENCY_HIST: PerCpuHashMap<MapKey<maps::LatencyHist>, Value<maps::LatencyHist>> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_HIST_ENTRIES, BPF_F_NO_PREALLOC);

/// Packets inside WireGuard, per peer and direction (see delay.rs). Mmapable only for where
/// that puts the values: from a page boundary, so each 64-byte FIFO is one cache line.
#[map(name = "DELAY_FIFO")]
static DELAY_FIFO: Array<Value<maps::DelayFifo>> = Array::with_max_entries(2 * DEFAULT_MAX_PEERS, BPF_F_MMAPABLE);

/// Underlay messages per peer slot (NO_SLOT: the device's own, peer unknown).
#[map(name = "MESSAGES")]
static MESSAGES: PerCpuHashMap<MapKey<maps::Messages>, Value<maps::Messages>> =
    PerCpuHashMap::with_max_entries(DEFAULT_MAX_PEERS + 1, BPF_F_NO_PREALLOC);

/// Datagrams to our port that are no valid message, by reason.
#[map(name = "INVALID")]
static INVALID: PerCpuArray<Value<maps::Invalid>> =
    PerCpuArray::with_max_entries(wg_common::protocol::Invalid::ALL.len() as u32, 0);

/// Indices we gave out in handshakes → the peer's slot. LRU: indices change at every
/// handshake, so old ones fall out by themselves.
#[map(name = "INDICES")]
static INDICES: aya_ebpf::maps::LruHashMap<MapKey<maps::Indices>, Value<maps::Indices>> =
    aya_ebpf::maps::LruHashMap::with_max_entries(4 * DEFAULT_MAX_PEERS, 0);

/// A peer's UDP endpoint → its slot, for the underlay programs.
#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<MapKey<maps::Endpoints>, Value<maps::Endpoints>> =
    HashMap::with_max_entries(DEFAULT_MAX_PEERS, BPF_F_NO_PREALLOC);

/// The same endpoints at the places their hash picks (see wg_common::latency::EndpointPlace):
/// asked first, an array lookup the verifier inlines.
#[map(name = "ENDPOINT_PLACES")]
static ENDPOINT_PLACES: Array<Value<maps::EndpointPlaces>> = Array::with_max_entries(DEFAULT_MAX_PEERS, BPF_F_MMAPABLE);

/// The device's listen port (one entry), set by the collector.
#[map(name = "LISTEN_PORT")]
static LISTEN_PORT: aya_ebpf::maps::Array<Value<maps::ListenPort>> = aya_ebpf::maps::Array::with_max_entries(1, 0);

/// Peer slot → public key: the collector's record, kept here so it outlives the collector.
#[map(name = "SLOT_KEYS")]
static SLOT_KEYS: HashMap<MapKey<maps::SlotKeys>, Value<maps::SlotKeys>> =
    HashMap::with_max_entries(DEFAULT_MAX_PEERS, BPF_F_NO_PREALLOC);

/// What these maps are (see wg_common::pinning), written by the collector that made them.
#[map(name = "META")]
static META: aya_ebpf::maps::Array<Value<maps::Meta>> =
    aya_ebpf::maps::Array::with_max_entries(wg_common::pinning::META_ENTRIES, 0);

/// Each peer slot's receive session: the window of message counters (see path.rs). Shared by
/// all CPUs, changed under the session's lock.
#[map(name = "RX_SESSIONS")]
static RX_SESSIONS: Array<Value<maps::RxSessions>> = Array::with_max_entries(DEFAULT_MAX_PEERS, 0);

#[map(name = "LATENCY_STATS")]
static LATENCY_STATS: PerCpuArray<Value<maps::LatencyStats>> =
    PerCpuArray::with_max_entries(wg_common::latency::stats::ENTRIES, 0);

#[classifier]
pub fn wg_plain_ingress(ctx: TcContext) -> i32 {
    count::<DIR_RX>(&ctx);
    TC_NEXT
}

#[classifier]
pub fn wg_plain_egress(ctx: TcContext) -> i32 {
    count::<DIR_TX>(&ctx);
    TC_NEXT
}

#[classifier]
pub fn wg_under_ingress(ctx: TcContext) -> i32 {
    underlay::observe::<DIR_RX>(&ctx);
    TC_NEXT
}

#[classifier]
pub fn wg_under_egress(ctx: TcContext) -> i32 {
    underlay::observe::<DIR_TX>(&ctx);
    TC_NEXT
}

/// Settles the receive session of the peer slot in the packet's first four bytes (little-
/// endian): the collector runs it with BPF_PROG_TEST_RUN when WireGuard's session of that
/// peer has expired, so the unseen counters of its window are counted lost then rather than
/// when (if ever) the peer's next session starts. Never attached.
#[classifier]
pub fn wg_path_settle(ctx: TcContext) -> i32 {
    if let Some(slot) = latency::direct::<0, 4>(&ctx) {
        path::settle(u32::from_le_bytes(*slot));
    }
    TC_NEXT
}

/// Returns the bucket ([`wg_common::buckets::bucket_of`]) of the little-endian u64 in the
/// packet's first eight bytes, or -1 without them: the test that the kernel bins exactly as
/// userspace does runs it with BPF_PROG_TEST_RUN. Never attached (its return is not a TC
/// verdict).
#[classifier]
pub fn check_bucket_of(ctx: TcContext) -> i32 {
    match latency::direct::<0, 8>(&ctx) {
        Some(v) => wg_common::buckets::bucket_of(u64::from_le_bytes(*v)) as i32,
        None => -1,
    }
}

/// Does nothing: the baseline the benchmark subtracts (BPF_PROG_TEST_RUN's own cost). Never
/// attached by the collector.
#[classifier]
pub fn bench_noop(_ctx: TcContext) -> i32 {
    TC_NEXT
}

/// The least a counting program does: one per-CPU counter (slot 0's) up by one, nothing
/// read from the packet. The per-wire-packet bench attaches it to the four hooks: what a
/// counter costs under real traffic, the floor under any counting. Never attached by the
/// collector.
#[classifier]
pub fn bench_floor(_ctx: TcContext) -> i32 {
    if let Some(c) = PEER_COUNTERS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, see `count`.
        unsafe { (*c).dir[DIR_TX].packets += 1 };
    }
    TC_NEXT
}

/// The floor, plus what any counting must read of its packet before it can count it: the
/// skb's length, its GSO size (in the shared info at the end of the buffer) and one word of
/// the header (where an IPv4 address lies on the WireGuard interface). The per-wire-packet
/// bench attaches it beside the floor: what is left of counting's cost above it is finding
/// the peer. Never attached by the collector.
#[classifier]
pub fn bench_read(ctx: TcContext) -> i32 {
    let len = ctx.len() as u64;
    // SAFETY: reading a field of the context the kernel handed us.
    let gso = unsafe { (*ctx.skb.skb).gso_size } as u64;
    let word = latency::direct::<0, 20>(&ctx).map_or(0, |p| latency::word::<16, 20>(p)) as u64;
    if let Some(c) = PEER_COUNTERS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value, see `count`. The word goes in too, so it is read.
        let c = unsafe { &mut (*c).dir[DIR_TX] };
        c.packets += 1;
        c.bytes += len + gso + (word & 1);
    }
    TC_NEXT
}

const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
pub(crate) const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// The fields of an IP header this program needs.
pub(crate) struct Ip {
    /// Length of the IP header (IPv4 IHL, or the fixed IPv6 header).
    pub hdr_len: u32,
    /// Transport protocol (IPv4 protocol / IPv6 next header).
    pub proto: u8,
    /// Source (ingress) or destination (egress) address, network order.
    pub addr: Addr,
}

/// Zeroes `space` in place with 8-byte (or 4-byte) stores and hands it out initialized. Zero
/// arrays or structs made any other way (`[0u8; N]`, a literal with `[0; 16]` fields, a
/// helper returning one by value) compile, wherever they must exist in memory (a buffer a
/// helper fills, a key partly written from the packet), to a call of the byte-at-a-time
/// `memset` the BPF target links in: two of them cost the TCP path ~40 ns per segment.
/// `T`: plain data (all-zero valid), size a multiple of 4, alignment at least 4.
#[inline(always)]
pub(crate) fn zeroed<T: Copy>(space: &mut core::mem::MaybeUninit<T>) -> &mut T {
    use core::mem::{align_of, size_of};
    const { assert!(size_of::<T>() % 4 == 0 && align_of::<T>() >= 4) };
    // Volatile, so LLVM cannot fold the stores back into a memset.
    if size_of::<T>() % 8 == 0 && align_of::<T>() >= 8 {
        let w = space.as_mut_ptr() as *mut u64;
        for i in 0..size_of::<T>() / 8 {
            // SAFETY: inside `space`, aligned (checked just above).
            unsafe { w.add(i).write_volatile(0) };
        }
    } else {
        let w = space.as_mut_ptr() as *mut u32;
        for i in 0..size_of::<T>() / 4 {
            // SAFETY: inside `space`, aligned (asserted above).
            unsafe { w.add(i).write_volatile(0) };
        }
    }
    // SAFETY: every byte written; zero is a valid T (the callers' promise).
    unsafe { space.assume_init_mut() }
}

/// A byte buffer on the stack that [`zeroed`] can clear with 8-byte stores.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct Buf<const N: usize>(pub(crate) [u8; N]);

pub(crate) enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[inline(always)]
fn count<const DIR: usize>(ctx: &TcContext) {
    let len = ctx.len();
    let ip = match parse_ip::<DIR>(ctx) {
        Ok(ip) => ip,
        Err(reason) => {
            // Rare on a WireGuard interface, so worth a line in the collector's debug log
            // (the log level is set at load time; disabled levels cost a compare).
            let first = ctx.load::<u8>(0).unwrap_or(0);
            debug!(
                ctx,
                "malformed packet (reason {}, direction {}): {} bytes, first byte {:x}", reason as u32, DIR, len, first
            );
            return add_unattributed(DIR, reason, 1, len);
        }
    };
    let (packets, bytes) = segments(ctx, &ip, len);
    // Host addresses first (exact match: the host block, then the hash), then the prefixes.
    // SAFETY (the derefs): pointers to map values, valid for this program run.
    let slot = match ip.addr {
        Addr::V4(a) => in_host_block(a)
            .or_else(|| HOSTS_V4.get_ptr(a).map(|s| unsafe { *s }))
            .or_else(|| PEERS_V4.get(Key::new(32, a)).copied()),
        Addr::V6(a) => HOSTS_V6.get_ptr(a).map(|s| unsafe { *s }).or_else(|| PEERS_V6.get(Key::new(128, a)).copied()),
    };
    let Some(slot) = slot else {
        return add_unattributed(DIR, Unattributed::NoPeer, packets, bytes);
    };
    if let Some(c) = PEER_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value: nothing else writes it while this program runs on this CPU.
        let c = unsafe { &mut (*c).dir[DIR] };
        c.packets += packets;
        c.bytes += bytes;
    }
    let clock = latency::Clock::new();
    if delay::enabled() {
        // One size to match only for a single packet; a GSO batch's segments differ.
        let one = if packets == 1 { len } else { 0 };
        if DIR == DIR_TX {
            delay::push(slot, false, &clock, one, packets as u32);
        } else {
            delay::pop(slot, true, &clock, one, packets as u32);
        }
    }
    // Round trips: only TCP and ICMP can be matched (IPv6 extension headers may come
    // first: hop-by-hop 0, routing 43, destination options 60, AH 51).
    if matches!(ip.proto, PROTO_TCP | latency::PROTO_ICMP | latency::PROTO_ICMPV6 | 0 | 43 | 51 | 60) {
        latency::track::<DIR>(ctx, &ip, slot, &clock);
    }
}

/// The slot of an IPv4 host address in the host block (see wg_common::names::HOST_BLOCK_V4).
#[inline(always)]
fn in_host_block(a: [u8; 4]) -> Option<u32> {
    let at = HOST_BLOCK_AT.get(0)?;
    let host = u32::from_be_bytes(a);
    if at.enabled == 0 || host >> 16 != at.high {
        return None;
    }
    HOST_BLOCK_V4.get(host & 0xffff)?.checked_sub(1)
}

/// Reads the IP header by direct packet access; falls back to `bpf_skb_load_bytes` only
/// when the header is not in the linear part of the skb (rare: some drivers hand up paged
/// packets).
#[inline(always)]
fn parse_ip<const DIR: usize>(ctx: &TcContext) -> Result<Ip, Unattributed> {
    let start = ctx.data();
    let end = ctx.data_end();
    let mut hdr = core::mem::MaybeUninit::uninit();
    let hdr = &mut zeroed::<Buf<IPV6_HDR>>(&mut hdr).0;
    let bytes: &[u8; IPV6_HDR] = if start + IPV6_HDR <= end {
        // SAFETY: bounds checked against data_end just above.
        unsafe { &*(start as *const [u8; IPV6_HDR]) }
    } else if start + IPV4_HDR <= end {
        // Short but linear: an IPv4 packet of 20..39 bytes (a bare ACK, a small ping).
        // SAFETY: bounds checked against data_end just above.
        let v4 = unsafe { &*(start as *const [u8; IPV4_HDR]) };
        hdr[..IPV4_HDR].copy_from_slice(v4);
        hdr
    } else {
        let avail = core::cmp::min(ctx.len() as usize, IPV6_HDR);
        if avail < IPV4_HDR {
            return Err(match ctx.load::<u8>(0) {
                Ok(b) if b >> 4 != 4 && b >> 4 != 6 => Unattributed::NotIp,
                _ => Unattributed::Truncated,
            });
        }
        if ctx.load_bytes(0, &mut hdr[..avail]).is_err() {
            return Err(Unattributed::Truncated);
        }
        hdr
    };
    let len = ctx.len() as usize;
    match bytes[0] >> 4 {
        4 => {
            let ihl = ((bytes[0] & 0x0f) as u32) * 4;
            if len < IPV4_HDR || (ihl as usize) < IPV4_HDR || ihl as usize > len {
                return Err(Unattributed::Truncated);
            }
            let off = if DIR == DIR_RX { 12 } else { 16 };
            let mut a = [0u8; 4];
            a.copy_from_slice(&bytes[off..off + 4]);
            Ok(Ip { hdr_len: ihl, proto: bytes[9], addr: Addr::V4(a) })
        }
        6 => {
            if len < IPV6_HDR {
                return Err(Unattributed::Truncated);
            }
            let off = if DIR == DIR_RX { 8 } else { 24 };
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes[off..off + 16]);
            Ok(Ip { hdr_len: IPV6_HDR as u32, proto: bytes[6], addr: Addr::V6(a) })
        }
        _ => Err(Unattributed::NotIp),
    }
}

/// Packets and bytes this skb stands for on the wire. A GSO super-packet (TCP bulk
/// traffic on egress; coalesced packets from a TUN device on ingress) becomes
/// ceil(payload / gso_size) segments, each carrying its own copy of the headers. The
/// kernel leaves `gso_segs` at 0 for packets that come from a TUN device, so it is
/// computed here rather than read.
#[inline(always)]
fn segments(ctx: &TcContext, ip: &Ip, len: u32) -> (u64, u64) {
    // SAFETY: reading fields of the context the kernel handed us.
    let (gso_size, gso_segs) = unsafe { ((*ctx.skb.skb).gso_size, (*ctx.skb.skb).gso_segs) };
    if gso_size == 0 {
        return (1, len as u64);
    }
    let l4_len = match ip.proto {
        PROTO_TCP => match ctx.load::<u8>(ip.hdr_len as usize + 12) {
            Ok(doff) => ((doff >> 4) as u32) * 4,
            Err(_) => 0,
        },
        PROTO_UDP => 8,
        _ => 0,
    };
    let hdr = ip.hdr_len + l4_len;
    let segs = if l4_len == 0 {
        // Unknown transport: trust the kernel's count if it has one.
        if gso_segs > 0 {
            gso_segs
        } else {
            1
        }
    } else if len > hdr {
        (len - hdr).div_ceil(gso_size)
    } else {
        1
    };
    let segs = if segs == 0 { 1 } else { segs };
    (segs as u64, len as u64 + (segs as u64 - 1) * hdr as u64)
}

#[inline(always)]
fn add_unattributed(dir: usize, reason: Unattributed, packets: u64, bytes: impl Into<u64>) {
    if let Some(c) = UNATTRIBUTED.get_ptr_mut(unattributed_index(dir, reason)) {
        // SAFETY: a per-CPU value, see `count`.
        let c = unsafe { &mut *c };
        c.packets += packets;
        c.bytes += bytes.into();
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
