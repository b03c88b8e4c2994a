//! The encrypted side: WireGuard's UDP datagrams on the underlay interface (Ethernet). Only
//! datagrams from (egress) or to (ingress) the device's listen port are looked at.
//!
//! Handshake round trips, by the indices each side picks (../shared/docs/wireguard-wire.md):
//! - initiator: our initiation (type 1, sender index S) → the response (type 2) whose
//!   receiver index is S;
//! - responder: our response (type 2, sender index R) → the first data message (type 4)
//!   whose receiver index is R (the initiator confirms the session with it).
//!
//! Samples go to the peer whose endpoint the datagram came from; a datagram from an endpoint
//! the collector has not synced yet (a peer that just roamed) goes to the device only.

use core::mem::MaybeUninit;

use aya_ebpf::bindings::BPF_ANY;
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use wg_common::{
    latency::{Endpoint, EndpointPlace, Kind, PendingKey, ENDPOINT_WORDS},
    protocol::{classify, Invalid, MessageCounts, MessageType, NO_SLOT},
    DEFAULT_MAX_PEERS, DIR_RX,
};

use crate::{
    latency::{answer, direct, load, question, word},
    ENDPOINTS, ENDPOINT_PLACES, INDICES, INVALID, LISTEN_PORT, MESSAGES,
};

const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const PROTO_UDP: u8 = 17;

const DATA_MIN_LEN: u32 = 32;

/// A WireGuard datagram of this device, as far as the programs need it.
pub(crate) struct Datagram {
    /// The peer's end: destination on egress, source on ingress.
    pub remote: Endpoint,
    /// Length of the WireGuard message (the UDP payload).
    pub len: u32,
    /// Offset of the message in the packet.
    pub msg: u32,
    /// The message's first 12 bytes as words in memory order: the type, then two indices
    /// (little-endian).
    pub head: [u32; 3],
}

impl Datagram {
    /// The message's first four bytes (type, three reserved).
    #[inline(always)]
    pub fn kind(&self) -> [u8; 4] {
        self.head[0].to_ne_bytes()
    }

    /// The first index after the type (sender or receiver, by type).
    #[inline(always)]
    pub fn first(&self) -> u32 {
        u32::from_le(self.head[1])
    }

    /// The second index (a response's receiver index).
    #[inline(always)]
    pub fn second(&self) -> u32 {
        u32::from_le(self.head[2])
    }
}

/// Source and destination port of the UDP header whose first word (memory order) is `w`.
#[inline(always)]
fn ports(w: u32) -> (u16, u16) {
    let b = w.to_ne_bytes();
    (u16::from_be_bytes([b[0], b[1]]), u16::from_be_bytes([b[2], b[3]]))
}

/// Finds a WireGuard datagram of this device in an Ethernet frame. Every packet on the
/// underlay passes here, so the usual frames (untagged IPv4 without options, or IPv6 without
/// extension headers) are read by direct packet access, a word at a time; others through the
/// helper.
#[inline(always)]
pub(crate) fn parse<const DIR: usize>(ctx: &TcContext) -> Option<Datagram> {
    let port = LISTEN_PORT.get(0).copied().unwrap_or(0);
    if port == 0 {
        return None;
    }
    let eth = direct::<12, 2>(ctx)?;
    let proto = u16::from_be_bytes(*eth);
    // Untagged IPv4, no options: 14 + 20 + 8, then the message head.
    if proto == ETH_P_IP {
        if let Some(p) = direct::<14, 54>(ctx) {
            if p[0] == 0x45 {
                if p[9] != PROTO_UDP || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                    return None; // not UDP, or a fragment
                }
                let (sport, dport) = ports(word::<20, 54>(p));
                let (ours, theirs) = if DIR == DIR_RX { (dport, sport) } else { (sport, dport) };
                if ours as u32 != port {
                    return None;
                }
                let addr = if DIR == DIR_RX { word::<12, 54>(p) } else { word::<16, 54>(p) };
                return Some(Datagram {
                    remote: Endpoint::of_v4_word(addr, theirs),
                    len: ctx.len().saturating_sub(ETH_HLEN + 28),
                    msg: ETH_HLEN + 28,
                    head: [word::<28, 54>(p), word::<32, 54>(p), word::<36, 54>(p)],
                });
            }
        }
    } else if proto == ETH_P_IPV6 {
        if let Some(p) = direct::<14, 74>(ctx) {
            // Not IPv6 whatever the EtherType says (the stack drops it), or not UDP.
            if p[0] >> 4 != 6 || p[6] != PROTO_UDP {
                return None;
            }
            let (sport, dport) = ports(word::<40, 74>(p));
            let (ours, theirs) = if DIR == DIR_RX { (dport, sport) } else { (sport, dport) };
            if ours as u32 != port {
                return None;
            }
            let addr = if DIR == DIR_RX {
                [word::<8, 74>(p), word::<12, 74>(p), word::<16, 74>(p), word::<20, 74>(p)]
            } else {
                [word::<24, 74>(p), word::<28, 74>(p), word::<32, 74>(p), word::<36, 74>(p)]
            };
            return Some(Datagram {
                remote: Endpoint::of_words(addr, theirs),
                len: ctx.len().saturating_sub(ETH_HLEN + 48),
                msg: ETH_HLEN + 48,
                head: [word::<48, 74>(p), word::<52, 74>(p), word::<56, 74>(p)],
            });
        }
    }
    parse_slow::<DIR>(ctx, port)
}

/// The same through `bpf_skb_load_bytes`: VLAN tags, IPv4 options, short linear parts.
#[inline(never)]
fn parse_slow<const DIR: usize>(ctx: &TcContext, port: u32) -> Option<Datagram> {
    let mut eth = [0u8; 14];
    if !load(ctx, 0, &mut eth) {
        return None;
    }
    let mut l3 = ETH_HLEN;
    let mut proto = u16::from_be_bytes([eth[12], eth[13]]);
    if proto == ETH_P_8021Q {
        let mut tag = [0u8; 4];
        if !load(ctx, 14, &mut tag) {
            return None;
        }
        proto = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += 4;
    }
    let mut remote = Endpoint::default();
    let l4 = match proto {
        ETH_P_IP => {
            let mut ip = [0u8; 20];
            if !load(ctx, l3, &mut ip)
                || ip[0] >> 4 != 4
                || (ip[0] & 0x0f) < 5
                || ip[9] != PROTO_UDP
                || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
            {
                return None; // not IPv4 (version, a header shorter than 20 bytes), not UDP, or a fragment
            }
            let off = if DIR == DIR_RX { 12 } else { 16 };
            remote.addr[10] = 0xff;
            remote.addr[11] = 0xff;
            remote.addr[12..16].copy_from_slice(&ip[off..off + 4]);
            l3 + ((ip[0] & 0x0f) as u32) * 4
        }
        ETH_P_IPV6 => {
            let mut ip = [0u8; 40];
            if !load(ctx, l3, &mut ip) || ip[0] >> 4 != 6 || ip[6] != PROTO_UDP {
                return None;
            }
            let off = if DIR == DIR_RX { 8 } else { 24 };
            remote.addr.copy_from_slice(&ip[off..off + 16]);
            l3 + 40
        }
        _ => return None,
    };
    let mut udp = [0u8; 8];
    if !load(ctx, l4, &mut udp) {
        return None;
    }
    let (sport, dport) = (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
    let (ours, theirs) = if DIR == DIR_RX { (dport, sport) } else { (sport, dport) };
    if ours as u32 != port {
        return None;
    }
    remote.port = theirs;
    let msg = l4 + 8;
    let len = ctx.len().saturating_sub(msg);
    // Short messages are counted as such: read what there is of the head.
    let mut head = [0u8; 12];
    if len >= 12 {
        if !load(ctx, msg, &mut head) {
            return None;
        }
    } else if len >= 4 {
        let mut h4 = [0u8; 4];
        if !load(ctx, msg, &mut h4) {
            return None;
        }
        head[..4].copy_from_slice(&h4);
    }
    // Bytes from the stack (the verifier wants stack loads aligned), not `word`'s loads.
    let at = |i: usize| u32::from_ne_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    Some(Datagram { remote, len, msg, head: [at(0), at(4), at(8)] })
}

/// The endpoint table's size − 1 (a power of two): set by the collector at load time.
#[unsafe(no_mangle)]
static ENDPOINT_PLACES_MASK: u32 = DEFAULT_MAX_PEERS - 1;

/// The peer slot of an endpoint, or [`NO_SLOT`]: from its place in the endpoint table when
/// it is there, else from the hash.
#[inline(always)]
pub(crate) fn slot_of(e: &Endpoint) -> u32 {
    // SAFETY: a read-only global the loader may patch before load.
    let mask = unsafe { core::ptr::read_volatile(&ENDPOINT_PLACES_MASK) };
    let place = e.place();
    if let Some(p) = ENDPOINT_PLACES.get_ptr(place & mask) {
        // Each word read once (volatile): the collector may be rewriting the place, and the
        // check must be tested against the very words compared.
        let w = p as *const u32;
        // SAFETY: an array value of 8 words (EndpointPlace), valid for this run.
        let word = |i: usize| unsafe { core::ptr::read_volatile(w.add(i)) };
        let ours = e.words();
        let mut diff = 0;
        for i in 0..ENDPOINT_WORDS {
            diff |= word(i) ^ ours[i];
        }
        let (slot, check) = (word(ENDPOINT_WORDS), word(ENDPOINT_WORDS + 1));
        if diff == 0 && check == EndpointPlace::check_of(place, slot) {
            return slot;
        }
    }
    // SAFETY: a map value, valid for this run.
    ENDPOINTS.get_ptr(e).map(|s| unsafe { *s }).unwrap_or(NO_SLOT)
}

/// The pending key of a handshake index. Made as a value (not with `crate::zeroed`): it is
/// all constants but two words, so LLVM folds the hash over the zero words and keeps the
/// key in registers where it is only looked up (the responder check on every data message,
/// ~14 ns cheaper). A question, rare, stores it and pays a memset.
#[inline(always)]
const fn index_key(kind: Kind, index: u32) -> PendingKey {
    PendingKey {
        local: [0; 16],
        remote: [0; 16],
        local_port: 0,
        remote_port: 0,
        kind: kind as u16,
        _pad: 0,
        value: index,
    }
}

/// Counts a message for a peer (or the device), by direction and type.
#[inline(always)]
fn count(slot: u32, dir: usize, t: MessageType, n: u64) {
    if t == MessageType::Data {
        if let Some(c) = crate::PEER_COUNTERS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU value (see PeerCounters::data_messages).
            unsafe { (*c).data_messages[dir & 1] += n };
            return;
        }
        // The device's own (NO_SLOT, outside the array): with the other types.
    }
    let mut c = MESSAGES.get_ptr_mut(&slot);
    if c.is_none() {
        let mut zero = MaybeUninit::uninit();
        let _ = MESSAGES.insert(&slot, crate::zeroed::<MessageCounts>(&mut zero), 0);
        c = MESSAGES.get_ptr_mut(&slot);
    }
    if let Some(c) = c {
        // SAFETY: a per-CPU value; dir and type are in range.
        unsafe { (*c).counts[dir & 1][t as usize] += n };
    }
}

#[inline(always)]
fn invalid(reason: Invalid) {
    if let Some(c) = INVALID.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU value.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub(crate) fn observe<const DIR: usize>(ctx: &TcContext) {
    let Some(d) = parse::<DIR>(ctx) else { return };
    // A GSO (UDP_SEGMENT) or GRO batch holds several messages of gso_size bytes each (the
    // last one shorter): judge the first, count them all.
    // SAFETY: reading the context's own field.
    let gso = unsafe { (*ctx.skb.skb).gso_size };
    let (msg_len, n) = if gso > 0 && d.len > gso { (gso, d.len.div_ceil(gso) as u64) } else { (d.len, 1) };
    let t = match classify(d.kind(), msg_len) {
        Ok(t) => t,
        // WireGuard sends only valid messages; what arrives may be anything.
        Err(reason) => {
            if DIR == DIR_RX {
                invalid(reason);
            }
            return;
        }
    };
    let (first, second) = (d.first(), d.second());
    let mut slot = slot_of(&d.remote);
    if DIR == DIR_RX {
        // Responses, cookie replies and data name an index we gave out (receiver index:
        // second field of a response, first of the others).
        let ours = if t == MessageType::HandshakeResponse { second } else { first };
        if slot == NO_SLOT && t != MessageType::HandshakeInitiation {
            match INDICES.get_ptr(&ours) {
                Some(s) => slot = unsafe { *s },
                None => return invalid(Invalid::UnknownIndex),
            }
        }
    } else if t == MessageType::HandshakeInitiation || t == MessageType::HandshakeResponse {
        // Our sender index: later messages to it are this peer's, wherever they come from
        // (or the device's, when the endpoint is not synced yet: still ours, not junk).
        let _ = INDICES.insert(&first, &slot, BPF_ANY as u64);
    }
    count(slot, DIR, t, n);

    // SAFETY: a helper without arguments.
    let now = || unsafe { bpf_ktime_get_ns() };
    match (DIR == DIR_RX, t) {
        // Questions: our initiation (sender index), our response (sender index).
        (false, MessageType::HandshakeInitiation) => question(&index_key(Kind::HandshakeInitiator, first), now),
        (false, MessageType::HandshakeResponse) => question(&index_key(Kind::HandshakeResponder, first), now),
        // Answers: a response to our initiation (its receiver index), data on the session we
        // answered (its receiver index).
        (true, MessageType::HandshakeResponse) => {
            answer(&index_key(Kind::HandshakeInitiator, second), slot, Kind::HandshakeInitiator, now)
        }
        (true, MessageType::Data | MessageType::Keepalive) => {
            // Most data finds no question waiting: the clock is read only when one does.
            answer(&index_key(Kind::HandshakeResponder, first), slot, Kind::HandshakeResponder, now);
            if slot != NO_SLOT {
                crate::path::receive(ctx, &d, slot, first, n, gso);
            }
            if t == MessageType::Data {
                data::<DIR>(ctx, &d, slot);
            }
        }
        (false, MessageType::Data) => data::<DIR>(ctx, &d, slot),
        _ => {}
    }
}

/// A data message (or a GSO batch of them) for the encap/decap FIFOs: leaving, it takes its
/// plaintext's entry; arriving, it leaves one for its plaintext. Keepalives carry none.
#[inline(always)]
fn data<const DIR: usize>(ctx: &TcContext, d: &Datagram, slot: u32) {
    if !crate::delay::enabled() {
        return;
    }
    // SAFETY: reading the context's own field.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let (count, padded) = if gso_size > 0 && d.len > gso_size {
        // Segments of gso_size messages each; sizes differ at the end, so none is checked.
        (d.len.div_ceil(gso_size), 0)
    } else if d.len <= DATA_MIN_LEN {
        return; // a keepalive
    } else {
        (1, d.len - DATA_MIN_LEN)
    };
    if slot == NO_SLOT {
        return;
    }
    let clock = crate::latency::Clock::new();
    if DIR == DIR_RX {
        crate::delay::push(slot, true, &clock, padded, count);
    } else {
        crate::delay::pop(slot, false, &clock, padded, count);
    }
}
