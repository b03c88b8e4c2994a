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

/// Entries of a per-peer delay FIFO (a power of two).
pub const FIFO_LEN: usize = 64;

/// One packet (or GSO batch) that entered WireGuard and has not come out yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FifoEntry {
    /// When it went in (CLOCK_MONOTONIC ns).
    pub t: u64,
    /// Its plaintext length (encap) or padded length (decap); 0 = any (GSO batches).
    pub len: u32,
    /// Packets it stands for still to come out.
    pub count: u32,
}

/// Packets inside this host's WireGuard for one peer and direction, in order: WireGuard
/// keeps a peer's packets in order, so the next one out is the oldest one in.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Fifo {
    pub head: u32,
    pub tail: u32,
    /// Packets that will come out whose entries were pushed out by overflow: they are let
    /// go without a sample, so later packets still meet their own entries.
    pub orphans: u32,
    pub _pad: u32,
    pub entries: [FifoEntry; FIFO_LEN],
}

/// Key of a delay FIFO: peer slot · 2 + (0 encap, 1 decap).
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
