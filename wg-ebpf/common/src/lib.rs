//! Types and names shared by the kernel programs (`wg-ebpf`) and the collector.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes it into maps and the
//! collector reads it back byte for byte. With the `user` feature the types implement
//! `aya::Pod` so aya can copy them in and out of maps.
#![no_std]

pub mod buckets;
pub mod latency;
pub mod path;
pub mod pinning;
pub mod protocol;

/// Every map, declared once for both sides: its name and the types of its keys and values
/// (arrays are keyed by u32). The kernel declares its statics with [`maps::Key`] and
/// [`maps::Value`] of these, the collector opens them with the same, so a layout changed on
/// one side only does not compile.
pub mod maps {
    /// A map as both sides know it.
    pub trait MapDef {
        const NAME: &'static str;
        type Key;
        type Value;
    }

    /// The key type of map `M`.
    pub type Key<M> = <M as MapDef>::Key;
    /// The value type of map `M`.
    pub type Value<M> = <M as MapDef>::Value;

    macro_rules! maps {
        ($($(#[$doc:meta])* $def:ident, $name:ident: $key:ty => $value:ty;)*) => {$(
            $(#[$doc])*
            pub enum $def {}
            impl MapDef for $def {
                const NAME: &'static str = stringify!($name);
                type Key = $key;
                type Value = $value;
            }
        )*};
    }

    maps! {
        /// Hash: IPv4 host address (an allowed IP of /32) → peer slot. Looked up first: most
        /// gateway peers have one host address, and an exact match costs a fraction of a trie
        /// walk (a /32 is also the longest match there can be).
        HostsV4, HOSTS_V4: [u8; 4] => u32;
        /// Array indexed by the low 16 bits of an IPv4 host address in the /16 that
        /// [`HostBlockAt`] names: the peer slot + 1 of that /32 allowed IP (0: none). Holds the
        /// [`HostsV4`] entries of that /16, so the usual gateway (peers numbered from one
        /// subnet) finds its peer with an array lookup, which the verifier inlines, instead of
        /// a hash lookup (~30 ns here).
        HostBlockV4, HOST_BLOCK_V4: u32 => u32;
        /// Array of one [`crate::HostBlockAt`]: which /16 [`HostBlockV4`] holds.
        HostBlockAt, HOST_BLOCK_AT: u32 => crate::HostBlockAt;
        /// Hash: IPv6 host address (/128) → peer slot.
        HostsV6, HOSTS_V6: [u8; 16] => u32;
        /// LPM trie: IPv4 allowed IP shorter than /32 (network order) → peer slot.
        PeersV4, PEERS_V4: [u8; 4] => u32;
        /// LPM trie: IPv6 allowed IP shorter than /128 (network order) → peer slot.
        PeersV6, PEERS_V6: [u8; 16] => u32;
        /// Per-CPU array indexed by peer slot: [`crate::PeerCounters`].
        PeerCounters, PEER_COUNTERS: u32 => crate::PeerCounters;
        /// Per-CPU array indexed by [`crate::unattributed_index`]: [`crate::Counter`].
        Unattributed, UNATTRIBUTED: u32 => crate::Counter;
        /// Array (mmapable, a power of two) of [`crate::latency::PendingEntry`] indexed by
        /// [`crate::latency::PendingKey::place`]: questions waiting for their answer.
        Pending, PENDING: u32 => crate::latency::PendingEntry;
        /// Per-CPU hash: [`crate::latency::HistKey`] → [`crate::latency::HistValue`].
        LatencyHist, LATENCY_HIST: crate::latency::HistKey => crate::latency::HistValue;
        /// Per-CPU array of u64 counters indexed by [`crate::latency::stats`].
        LatencyStats, LATENCY_STATS: u32 => u64;
        /// Array indexed by [`crate::latency::fifo_key`]: [`crate::latency::Fifo`], packets inside
        /// WireGuard.
        DelayFifo, DELAY_FIFO: u32 => crate::latency::Fifo;
        /// Per-CPU hash: peer slot (or [`crate::protocol::NO_SLOT`]) → [`crate::protocol::MessageCounts`].
        Messages, MESSAGES: u32 => crate::protocol::MessageCounts;
        /// Per-CPU array indexed by [`crate::protocol::Invalid`]: datagrams to our port that are no
        /// valid message.
        Invalid, INVALID: u32 => u64;
        /// LRU hash: an index this device picked in a handshake → the peer's slot, so messages
        /// from an endpoint not synced yet (a roamed peer) are still the peer's.
        Indices, INDICES: u32 => u32;
        /// Hash: [`crate::latency::Endpoint`] → peer slot, for the underlay programs.
        Endpoints, ENDPOINTS: crate::latency::Endpoint => u32;
        /// Array (mmapable, a power of two) of [`crate::latency::EndpointPlace`]: the same
        /// endpoints placed by hash, looked up before the hash.
        EndpointPlaces, ENDPOINT_PLACES: u32 => crate::latency::EndpointPlace;
        /// Array of one u32: the device's listen port, which marks its datagrams on the underlay.
        ListenPort, LISTEN_PORT: u32 => u32;
        /// Hash: peer slot → the peer's public key. Written and read by the collector only, so a
        /// restarted collector knows which slot is whose (the programs never look at it).
        SlotKeys, SLOT_KEYS: u32 => [u8; 32];
        /// Array of u64 indexed by [`crate::pinning`]: what the pinned maps are.
        Meta, META: u32 => u64;
        /// Array indexed by peer slot: the peer's receive session and its window of message
        /// counters ([`crate::path::RxSession`]), shared by all CPUs.
        RxSessions, RX_SESSIONS: u32 => crate::path::RxSession;
    }
}

/// Map and program names, as strings (the maps' come from [`maps`]).
pub mod names {
    use super::maps::{self, MapDef};

    pub const HOSTS_V4: &str = maps::HostsV4::NAME;
    pub const HOST_BLOCK_V4: &str = maps::HostBlockV4::NAME;
    pub const HOST_BLOCK_AT: &str = maps::HostBlockAt::NAME;
    pub const HOSTS_V6: &str = maps::HostsV6::NAME;
    pub const PEERS_V4: &str = maps::PeersV4::NAME;
    pub const PEERS_V6: &str = maps::PeersV6::NAME;
    pub const PEER_COUNTERS: &str = maps::PeerCounters::NAME;
    pub const UNATTRIBUTED: &str = maps::Unattributed::NAME;
    pub const PENDING: &str = maps::Pending::NAME;
    pub const LATENCY_HIST: &str = maps::LatencyHist::NAME;
    pub const LATENCY_STATS: &str = maps::LatencyStats::NAME;
    pub const DELAY_FIFO: &str = maps::DelayFifo::NAME;
    pub const MESSAGES: &str = maps::Messages::NAME;
    pub const INVALID: &str = maps::Invalid::NAME;
    pub const INDICES: &str = maps::Indices::NAME;
    pub const ENDPOINTS: &str = maps::Endpoints::NAME;
    pub const ENDPOINT_PLACES: &str = maps::EndpointPlaces::NAME;
    pub const LISTEN_PORT: &str = maps::ListenPort::NAME;
    pub const SLOT_KEYS: &str = maps::SlotKeys::NAME;
    pub const META: &str = maps::Meta::NAME;
    pub const RX_SESSIONS: &str = maps::RxSessions::NAME;
    /// The maps pinned per device, so a collector restart or upgrade keeps counting: all
    /// state. (The programs' logs and read-only settings are made anew at each load.)
    pub const PINNED: [&str; 21] = [
        HOSTS_V4,
        HOSTS_V6,
        PEERS_V4,
        PEERS_V6,
        PEER_COUNTERS,
        UNATTRIBUTED,
        PENDING,
        LATENCY_HIST,
        LATENCY_STATS,
        DELAY_FIFO,
        MESSAGES,
        INVALID,
        INDICES,
        ENDPOINTS,
        LISTEN_PORT,
        SLOT_KEYS,
        META,
        HOST_BLOCK_V4,
        HOST_BLOCK_AT,
        ENDPOINT_PLACES,
        RX_SESSIONS,
    ];
    /// Never attached: run by the collector (BPF_PROG_TEST_RUN) to settle an expired session.
    pub const PROG_PATH_SETTLE: &str = "wg_path_settle";
    /// TC program on the underlay's ingress (encrypted datagrams from peers).
    pub const PROG_UNDER_INGRESS: &str = "wg_under_ingress";
    /// TC program on the underlay's egress (encrypted datagrams to peers).
    pub const PROG_UNDER_EGRESS: &str = "wg_under_egress";
    /// TC program on the WireGuard interface's ingress (plaintext received from peers).
    pub const PROG_INGRESS: &str = "wg_plain_ingress";
    /// TC program on the WireGuard interface's egress (plaintext sent to peers).
    pub const PROG_EGRESS: &str = "wg_plain_egress";
}

/// Default number of peer slots per device (the maps' `max_entries`; the collector can
/// change it at load time).
pub const DEFAULT_MAX_PEERS: u32 = 65_536;
/// Default number of allowed-IP prefixes per family and device.
pub const DEFAULT_MAX_ALLOWED_IPS: u32 = 262_144;
/// Default places for packets waiting for their answer, per device (a power of two).
pub const DEFAULT_MAX_PENDING: u32 = 65_536;
/// Default bound of histogram entries (peer, kind, bucket), per device.
pub const DEFAULT_MAX_HIST_ENTRIES: u32 = 262_144;

/// Direction of a plaintext packet on the WireGuard interface, seen from this host.
pub const DIR_RX: usize = 0;
/// Sent to a peer (egress of the WireGuard interface).
pub const DIR_TX: usize = 1;
pub const DIRECTIONS: usize = 2;

/// A packet and byte count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Entries of [`names::HOST_BLOCK_V4`]: one per address of a /16.
pub const HOST_BLOCK_ENTRIES: u32 = 1 << 16;

/// Which /16 [`names::HOST_BLOCK_V4`] holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostBlockAt {
    /// The /16's upper 16 bits (the address in host order, shifted right by 16).
    pub high: u32,
    /// 0 while the block is unused or being rewritten: the programs then use the hash.
    pub enabled: u32,
}

/// What the programs count for one peer slot, indexed by `DIR_RX` / `DIR_TX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Received transport messages lost, reordered and duplicated on the path (the
    /// underlay's ingress, from their counters: see [`crate::path`]). First, at offset 0: the
    /// program takes a pointer to it from a lookup that may be null, and LLVM moved the
    /// offset's addition before the null check, which the verifier refuses.
    pub path: crate::path::PathCounts,
    /// Plaintext packets and bytes (the WireGuard interface's programs).
    pub dir: [Counter; DIRECTIONS],
    /// Data messages on the underlay (the underlay's programs): here rather than in
    /// `MESSAGES` with the rarer types, because a per-CPU array lookup is inlined and that
    /// hash cost ~20 ns on every datagram.
    pub data_messages: [u64; DIRECTIONS],
}

/// Why a packet on the WireGuard interface could not be given to a peer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unattributed {
    /// An IP packet whose address is in no peer's allowed IPs.
    NoPeer = 0,
    /// Not IPv4 or IPv6 (version nibble).
    NotIp = 1,
    /// Shorter than its IP header.
    Truncated = 2,
}

impl Unattributed {
    pub const ALL: [Unattributed; 3] = [Self::NoPeer, Self::NotIp, Self::Truncated];

    pub const fn label(self) -> &'static str {
        match self {
            Self::NoPeer => "no_peer",
            Self::NotIp => "not_ip",
            Self::Truncated => "truncated",
        }
    }
}

/// Entries in the `UNATTRIBUTED` map.
pub const UNATTRIBUTED_ENTRIES: u32 = (DIRECTIONS * Unattributed::ALL.len()) as u32;

/// Index of (direction, reason) in the `UNATTRIBUTED` map.
#[inline(always)]
pub const fn unattributed_index(dir: usize, reason: Unattributed) -> u32 {
    (dir as u32) * Unattributed::ALL.len() as u32 + reason as u32
}

/// TC verdict that lets the packet continue unchanged to the next program (TC_ACT_UNSPEC,
/// which is also TCX_NEXT): our programs only observe.
pub const TC_NEXT: i32 = -1;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::PeerCounters {}
    unsafe impl aya::Pod for super::HostBlockAt {}
    unsafe impl aya::Pod for super::latency::HistKey {}
    unsafe impl aya::Pod for super::latency::HistValue {}
    unsafe impl aya::Pod for super::latency::PendingKey {}
    unsafe impl aya::Pod for super::latency::Endpoint {}
    unsafe impl aya::Pod for super::latency::Fifo {}
    unsafe impl aya::Pod for super::protocol::MessageCounts {}
    unsafe impl aya::Pod for super::path::RxSession {}
}
