//! What a pinned map set is, so a collector can tell whether it may adopt one that an earlier
//! collector (perhaps another version) left under bpffs.

use core::mem::size_of;

use crate::{
    latency::{Endpoint, EndpointPlace, Fifo, HistKey, HistValue, PendingEntry, PendingKey},
    path::RxSession,
    protocol::MessageCounts,
    Counter, HostBlockAt, PeerCounters,
};

/// Raised by hand when a map's meaning changes without its sizes changing (a counter moved
/// to another index, a key encoded differently).
pub const LAYOUT_VERSION: u64 = 3;

/// [`LAYOUT_VERSION`] and the sizes of every shared type, so a size change alone already
/// makes a different layout.
pub const fn layout() -> u64 {
    let sizes = [
        size_of::<Counter>(),
        size_of::<PeerCounters>(),
        size_of::<PendingKey>(),
        size_of::<PendingEntry>(),
        size_of::<HistKey>(),
        size_of::<HistValue>(),
        size_of::<Endpoint>(),
        size_of::<EndpointPlace>(),
        size_of::<Fifo>(),
        size_of::<MessageCounts>(),
        size_of::<HostBlockAt>(),
        size_of::<RxSession>(),
    ];
    // FNV-1a over the sizes: stable across builds and compilers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < sizes.len() {
        h ^= sizes[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    (LAYOUT_VERSION << 48) | (h & 0xffff_ffff_ffff)
}

/// [`crate::names::META`] index: [`layout`] of the collector that created the maps.
pub const META_LAYOUT: u32 = 0;
/// Entries of [`crate::names::META`].
pub const META_ENTRIES: u32 = 4;
