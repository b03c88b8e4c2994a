//! Latency samples: what the programs record and how they match questions to answers (the
//! buckets are in [`crate::buckets`]).

/// What a latency histogram measures. The value is part of [`HistKey`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Tunnel round trip: a TCP timestamp (TSval) sent → the first TSecr echoing it.
    TcpTs = 0,
    /// Tunnel round trip: SYN (or SYN-ACK) sent → the segment acknowledging it.
    TcpSyn = 1,
    /// Tunnel round trip: ICMP/ICMPv6 echo request sent → its reply (id, sequence).
    Icmp = 2,
    /// Handshake, we initiate: initiation (type 1) sent → response (type 2) to its index.
    HandshakeInitiator = 3,
    /// Handshake, we respond: response (type 2) sent → first data (type 4) to its index.
    HandshakeResponder = 4,
    /// Plaintext packet leaves the WireGuard interface → its data message leaves the underlay.
    Encap = 5,
    /// Data message arrives on the underlay → its plaintext arrives on the WireGuard interface.
    Decap = 6,
}

impl Kind {
    /// The tunnel round-trip methods (wireguard_peer_latency_seconds).
    pub const RTT: [Kind; 3] = [Self::TcpTs, Self::TcpSyn, Self::Icmp];
    /// The handshake roles (wireguard_peer_handshake_rtt_seconds).
    pub const HANDSHAKE: [Kind; 2] = [Self::HandshakeInitiator, Self::HandshakeResponder];

    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0 => Some(Self::TcpTs),
            1 => Some(Self::TcpSyn),
            2 => Some(Self::Icmp),
            3 => Some(Self::HandshakeInitiator),
            4 => Some(Self::HandshakeResponder),
            5 => Some(Self::Encap),
            6 => Some(Self::Decap),
            _ => None,
        }
    }

    /// The label value of the kind within its family (`method`, `role`, or none).
    pub const fn label(self) -> &'static str {
        match self {
            Self::TcpTs => "tcp_ts",
            Self::TcpSyn => "tcp_syn",
            Self::Icmp => "icmp",
            Self::HandshakeInitiator => "initiator",
            Self::HandshakeResponder => "responder",
            Self::Encap => "encap",
            Self::Decap => "decap",
        }
    }
}

/// Key of a histogram entry: one per (peer slot, kind, bucket) that has samples, so idle
/// peers cost nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub slot: u32,
    pub kind: u16,
    /// [`crate::buckets::bucket_of`] the sample.
    pub bucket: u16,
}

/// Samples in one bucket and their exact sum.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistValue {
    pub count: u64,
    pub sum_ns: u64,
}

/// A packet waiting for its answer: the flow as seen on the way out, what kind of match,
/// and the value the answer must carry (TSval, sequence number, or ICMP id << 16 | seq).
/// Addresses are IPv4-mapped for IPv4 flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PendingKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub kind: u16,
    pub _pad: u16,
    pub value: u32,
}

/// A key as the words the programs' tables hash and compare: no byte-wise compare, which the
/// BPF target would turn into a call of a byte-at-a-time `memcmp`.
/// `T`: repr(C) without padding bytes (the callers' promise); size and alignment are checked.
#[inline(always)]
fn as_words<T, const N: usize>(v: &T) -> &[u32; N] {
    const { assert!(core::mem::size_of::<T>() == 4 * N && core::mem::align_of::<T>() >= 4) };
    // SAFETY: same size, alignment enough, every byte initialized (no padding).
    unsafe { &*(v as *const T as *const [u32; N]) }
}

pub const PENDING_KEY_WORDS: usize = 11;

impl PendingKey {
    #[inline(always)]
    pub fn words(&self) -> &[u32; PENDING_KEY_WORDS] {
        as_words(self)
    }

    /// Where the question waits in the pending table: a hash of the whole key (both sides
    /// compute it, so tests can tell which keys share a place).
    #[inline(always)]
    pub fn place(&self) -> u32 {
        hash_words(self.words())
    }
}

/// The hash that picks a place in the programs' direct-mapped tables (pending questions,
/// endpoints): FNV-1a over words, then murmur3's finalizer so the low bits, which pick the
/// place, depend on every word. Cheap in BPF (a multiply per word, no loop left after
/// unrolling) and the same on both sides.
#[inline(always)]
pub fn hash_words<const N: usize>(w: &[u32; N]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < N {
        h = (h ^ w[i]).wrapping_mul(0x0100_0193);
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h
}

/// A place of the pending table (an array indexed by [`PendingKey::place`], sized a power of
/// two): the question waiting there and when it left (CLOCK_MONOTONIC ns; 0 = empty). A newer
/// question whose key hashes to the same place takes it (`displaced`). The collector clears
/// a place whose question waited past the TTL with a compare-and-swap of `sent`; the
/// programs take an answered one with a swap: a question ends exactly once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingEntry {
    pub key: PendingKey,
    pub _pad: u32,
    pub sent: u64,
}

/// A peer's UDP endpoint as the underlay sees it: address (IPv4-mapped for IPv4) and port.
/// 4-aligned so it can be read as words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

pub const ENDPOINT_WORDS: usize = 5;

impl Endpoint {
    #[inline(always)]
    pub fn words(&self) -> &[u32; ENDPOINT_WORDS] {
        as_words(self)
    }

    /// Its place in the endpoint table ([`EndpointPlace`]), before masking to the table's size.
    #[inline(always)]
    pub fn place(&self) -> u32 {
        hash_words(self.words())
    }

    /// The endpoint of `addr` (its 16 bytes as four words in memory order, as one load of
    /// each reads them from a packet) and `port` (host order). Built as words, so the
    /// programs write five words where field by field they wrote 18 bytes one at a time.
    #[inline(always)]
    pub fn of_words(addr: [u32; 4], port: u16) -> Self {
        let p = port.to_ne_bytes();
        let w = [addr[0], addr[1], addr[2], addr[3], u32::from_ne_bytes([p[0], p[1], 0, 0])];
        // SAFETY: five words are an Endpoint's 20 bytes (repr(C), no padding bytes: `_pad`
        // is a field), alignment 4 for both.
        unsafe { core::mem::transmute::<[u32; ENDPOINT_WORDS], Endpoint>(w) }
    }

    /// The IPv4-mapped endpoint (::ffff:a.b.c.d) of the IPv4 address `addr` (its four bytes
    /// as one word in memory order).
    #[inline(always)]
    pub fn of_v4_word(addr: u32, port: u16) -> Self {
        Self::of_words([0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr], port)
    }
}

/// A place of the endpoint table: an array (mmapable, a power of two) indexed by
/// [`Endpoint::place`] that the collector fills from the same endpoints as the ENDPOINTS
/// hash, so the underlay programs find most peers with an inlined array lookup (the hash with
/// its 20-byte key cost ~35 ns a datagram). Where two endpoints share a place one of them
/// lives only in the hash. The collector writes a place while the programs may read it:
/// `check` ([`EndpointPlace::check_of`]) is written last and binds endpoint and slot, so a
/// place read half-written does not verify and the programs ask the hash instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointPlace {
    pub endpoint: Endpoint,
    pub slot: u32,
    pub check: u32,
    /// To 32 bytes: array values are 8-byte aligned.
    pub _pad: u32,
}

impl EndpointPlace {
    /// Never 0, so an empty (zeroed) place never verifies. `place`: the endpoint's
    /// [`Endpoint::place`], which the programs have already computed to find the place.
    #[inline(always)]
    pub fn check_of(place: u32, slot: u32) -> u32 {
        (place ^ slot.wrapping_mul(0x9e37_79b1)) | 1
    }
}

/// Entries of a per-peer delay FIFO: with its 8-byte head, one 64-byte cache line. A gateway
/// with thousands of peers meets each FIFO cold, so what one packet costs is the lines it
/// touches: one (a 64-entry FIFO of 16-byte entries in a hash cost four: the bucket, the
/// element, the head and the entry, ~400 ns a packet at 10k peers). Deeper queues lose
/// samples to overflow (counted), never the pairing.
pub const FIFO_LEN: usize = 7;

/// One packet (or GSO batch) that entered WireGuard and has not come out yet, in 8 bytes.
/// Timed: when it went in (CLOCK_MONOTONIC ns, the low 47 bits: ages are taken modulo 2^47
/// ns, 1.6 days, far beyond [`FifoEntry::MAX_AGE_NS`]) and, in the high 16, either a single
/// packet's length or, with the top bit set, how many packets of a batch are still to come
/// out. Untimed (`--latency.sample` passed it over; bit 47 set): no time, the packets' length
/// in the low 16 bits and their count in the high 16, so a run of passed-over packets of one
/// size shares one entry ([`FifoEntry::joined`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FifoEntry(pub u64);

impl FifoEntry {
    /// An entry older than this is a packet that never came out (a dropped one), not a slow one.
    pub const MAX_AGE_NS: u64 = 500_000_000;
    const TIME: u64 = (1 << 47) - 1;
    const UNTIMED: u64 = 1 << 47;
    const BATCH: u64 = 1 << 15;

    /// A length as entries keep it: 0 (sizes not checked) for one too long for 15 bits.
    #[inline(always)]
    const fn kept_len(len: u32) -> u64 {
        if len < Self::BATCH as u32 {
            len as u64
        } else {
            0
        }
    }

    /// The high 16 bits of `count` packets: the batch bit and the count, saturating.
    #[inline(always)]
    const fn batch_tag(count: u32) -> u64 {
        Self::BATCH | if count < Self::BATCH as u32 { count as u64 } else { Self::BATCH - 1 }
    }

    /// `count` packets of `len` bytes each (0 = sizes not checked: GSO batches, whose
    /// segments differ, or a packet too long for 15 bits) that went in at `t`.
    #[inline(always)]
    pub const fn new(t: u64, len: u32, count: u32) -> Self {
        let tag = if count == 1 { Self::kept_len(len) } else { Self::batch_tag(count) };
        FifoEntry((t & Self::TIME) | tag << 48)
    }

    /// `count` packets of `len` bytes each (0 = not checked) that went in untimed: they keep
    /// their place in the order, come out without a sample, and nobody reads the clock for
    /// them.
    #[inline(always)]
    pub const fn untimed(len: u32, count: u32) -> Self {
        FifoEntry(Self::UNTIMED | Self::kept_len(len) | Self::batch_tag(count) << 48)
    }

    /// This untimed entry with `count` more packets of `len` bytes after it, if they are of
    /// its size and the count fits: with `--latency.sample N` a burst of many packets to one
    /// peer then takes an entry per timed packet and one per run between, where an entry
    /// each overflowed the FIFO (seven entries) and lost the burst's samples.
    #[inline(always)]
    pub const fn joined(self, len: u32, count: u32) -> Option<Self> {
        let total = self.count() as u64 + count as u64;
        if self.timed() || self.size() as u64 != Self::kept_len(len) || total >= Self::BATCH {
            return None;
        }
        Some(Self::untimed(len, total as u32))
    }

    /// Whether it went in with its time (see [`Self::untimed`]).
    #[inline(always)]
    pub const fn timed(self) -> bool {
        self.0 & Self::UNTIMED == 0
    }

    /// Nanoseconds since it went in (the clock is monotonic; an entry from "the future",
    /// written by another CPU a moment later, comes out as a huge age: given up).
    #[inline(always)]
    pub const fn age(self, now: u64) -> u64 {
        now.wrapping_sub(self.0) & Self::TIME
    }

    /// Its packets' size, 0 when not checked.
    #[inline(always)]
    pub const fn size(self) -> u32 {
        let tag = self.0 >> 48;
        if !self.timed() {
            (self.0 & 0xffff) as u32
        } else if tag & Self::BATCH != 0 {
            0
        } else {
            tag as u32
        }
    }

    /// Packets it stands for still to come out.
    #[inline(always)]
    pub const fn count(self) -> u32 {
        let tag = self.0 >> 48;
        if tag & Self::BATCH != 0 {
            (tag & (Self::BATCH - 1)) as u32
        } else {
            1
        }
    }

    /// The same entry with `count` packets left.
    #[inline(always)]
    pub const fn with_count(self, count: u32) -> Self {
        if self.timed() {
            FifoEntry::new(self.0, self.size(), count)
        } else {
            FifoEntry::untimed(self.size(), count)
        }
    }
}

/// Packets inside this host's WireGuard for one peer and direction, in order: WireGuard
/// keeps a peer's packets in order, so the next one out is the oldest one in. A value of
/// the `DELAY_FIFO` array: all zero is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fifo {
    /// Where the oldest entry is (0..FIFO_LEN).
    pub head: u8,
    /// Entries in use (0..=FIFO_LEN).
    pub used: u8,
    pub _pad: u16,
    /// Packets that will come out whose entries were pushed out by overflow: they are let
    /// go without a sample, so later packets still meet their own entries.
    pub orphans: u32,
    pub entries: [FifoEntry; FIFO_LEN],
}

const _: () = assert!(core::mem::size_of::<Fifo>() == 64, "a delay FIFO is one cache line");

/// Index of a delay FIFO: peer slot · 2 + (0 encap, 1 decap).
pub const fn fifo_key(slot: u32, decap: bool) -> u32 {
    slot.wrapping_mul(2) | decap as u32
}

/// Counters about the pending-match state and the histograms, in the `LATENCY_STATS`
/// per-CPU array.
pub mod stats {
    /// Packets recorded to wait for their answer.
    pub const RECORDED: u32 = 0;
    /// Answers matched (a sample taken).
    pub const MATCHED: u32 = 1;
    /// Questions that lost their place in the pending table to a newer question with the
    /// same hash before they were answered or expired.
    pub const DISPLACED: u32 = 2;
    /// Samples lost because the histogram map was full.
    pub const HIST_FULL: u32 = 3;
    /// Delay FIFO entries given up: the packet waited too long, or its size did not match
    /// what came out (it was dropped inside WireGuard).
    pub const FIFO_RESYNC: u32 = 4;
    /// Delay FIFO entries pushed out because more packets were inside WireGuard than fit.
    pub const FIFO_OVERFLOW: u32 = 5;
    pub const ENTRIES: u32 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_built_from_words_are_the_field_by_field_ones() {
        let v4 = [192, 0, 2, 7];
        let mut mapped = Endpoint { port: 51820, ..Default::default() };
        mapped.addr[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped.addr[12..].copy_from_slice(&v4);
        assert_eq!(Endpoint::of_v4_word(u32::from_ne_bytes(v4), 51820), mapped);
        let v6: [u8; 16] = core::array::from_fn(|i| 0x20 + i as u8);
        let words: [u32; 4] = core::array::from_fn(|i| u32::from_ne_bytes(v6[4 * i..4 * i + 4].try_into().unwrap()));
        assert_eq!(Endpoint::of_words(words, 443), Endpoint { addr: v6, port: 443, _pad: 0 });
    }

    #[test]
    fn a_fifo_entry_keeps_the_time_the_size_or_the_batch() {
        let t = 0x1234_5678_9abc_def0;
        let e = FifoEntry::new(t, 1420, 1);
        assert_eq!((e.size(), e.count(), e.age(t), e.age(t + 7)), (1420, 1, 0, 7));
        let b = FifoEntry::new(t, 0, 45);
        assert_eq!((b.size(), b.count(), b.age(t + 1_000)), (0, 45, 1_000));
        assert_eq!(b.with_count(3), FifoEntry::new(t, 0, 3));
        // Too long for 15 bits: kept, unchecked; a huge batch saturates.
        assert_eq!((FifoEntry::new(t, 40_000, 1).size(), FifoEntry::new(t, 40_000, 1).count()), (0, 1));
        assert_eq!(FifoEntry::new(t, 0, 100_000).count(), 32_767);
    }

    #[test]
    fn an_untimed_entry_keeps_its_size_and_count_and_joins_a_run_of_its_size() {
        let u = FifoEntry::untimed(1420, 1);
        assert_eq!((u.timed(), u.size(), u.count()), (false, 1420, 1));
        let b = FifoEntry::untimed(0, 45);
        assert_eq!((b.timed(), b.with_count(3).timed(), b.with_count(3).count()), (false, false, 3));
        assert_eq!(u.joined(1420, 1), Some(FifoEntry::untimed(1420, 2)));
        assert_eq!(u.joined(1420, 1).unwrap().with_count(1), u, "a run comes out one by one, its size kept");
        assert_eq!(b.joined(0, 5).map(|e| (e.size(), e.count())), Some((0, 50)), "GSO batches join unchecked");
        assert_eq!(u.joined(100, 1), None, "another size starts an entry of its own");
        assert_eq!(FifoEntry::untimed(40_000, 1).joined(50_000, 1).map(|e| e.count()), Some(2), "both unchecked");
        assert_eq!(FifoEntry::untimed(100, 32_767).joined(100, 1), None, "the count is full");
        assert_eq!(FifoEntry::new(7, 1420, 1).joined(1420, 1), None, "a timed entry takes no others");
        // Every time is a time, 0 included (the untimed mark is its own bit).
        assert!(FifoEntry::new(0, 100, 1).timed() && FifoEntry::new(1 << 47, 100, 1).timed());
    }

    #[test]
    fn ages_wrap_at_47_bits_and_the_future_is_stale() {
        // The clock crosses a multiple of 2^47 ns while the packet is inside.
        let t = (5 << 47) - 10;
        assert_eq!(FifoEntry::new(t, 100, 1).age(t + 25), 25);
        // Written by another CPU a moment after this one read its clock.
        assert!(FifoEntry::new(t + 5, 100, 1).age(t) > FifoEntry::MAX_AGE_NS);
    }
}
