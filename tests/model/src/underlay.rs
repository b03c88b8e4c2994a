//! The underlay's programs: an Ethernet frame (untagged or one 802.1Q tag) with an IPv4
//! (any IHL, not a fragment) or IPv6 (no extension headers) UDP datagram from (egress) or to
//! (ingress) the listen port carries a WireGuard message; it is classified by type and size
//! (../shared/docs/wireguard-wire.md), given to the peer of its remote endpoint or, arriving
//! from an unknown endpoint, of the handshake index it names, counted, and closes or opens a
//! handshake round trip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use wg_collector::bpf::Owner;
use wg_common::{
    latency::Kind,
    protocol::{Invalid, MessageType},
    DIR_RX,
};

use crate::{input::Packet, model::Model, pending::key, world};

/// Messages of a batch whose counters the programs read.
const MAX_SEGMENTS: u64 = 64;

fn at(p: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    p.get(off..off.checked_add(n)?)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The remote endpoint and the message (the UDP payload, to the end of the frame) of a
/// datagram of this device; `None` for every other frame.
fn datagram(p: &[u8], dir: usize) -> Option<(SocketAddr, &[u8])> {
    let (mut l3, mut proto) = (14, be16(at(p, 12, 2)?));
    if proto == 0x8100 {
        proto = be16(at(p, 16, 2)?);
        l3 = 18;
    }
    let (src, dst, l4): (IpAddr, IpAddr, usize) = match proto {
        0x0800 => {
            let ip = at(p, l3, 20)?;
            let ihl = (ip[0] & 0x0f) as usize * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || be16(&ip[6..]) & 0x3fff != 0 {
                return None;
            }
            let a = |o: usize| IpAddr::from(Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]));
            (a(12), a(16), l3 + ihl)
        }
        0x86dd => {
            let ip = at(p, l3, 40)?;
            if ip[0] >> 4 != 6 || ip[6] != 17 {
                return None;
            }
            let a = |o: usize| IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap()));
            (a(8), a(24), l3 + 40)
        }
        _ => return None,
    };
    let udp = at(p, l4, 8)?;
    let (sport, dport) = (be16(udp), be16(&udp[2..]));
    let (ours, remote) =
        if dir == DIR_RX { (dport, SocketAddr::new(src, sport)) } else { (sport, SocketAddr::new(dst, dport)) };
    (ours == world::LISTEN_PORT).then(|| (remote, &p[l4 + 8..]))
}

/// A message's type by its first four bytes and its length.
fn classify(m: &[u8], len: usize) -> Result<MessageType, Invalid> {
    if len < 4 {
        return Err(Invalid::TooShort);
    }
    if m[1..4] != [0, 0, 0] {
        return Err(Invalid::BadType);
    }
    match (m[0], len) {
        (1, 148) => Ok(MessageType::HandshakeInitiation),
        (2, 92) => Ok(MessageType::HandshakeResponse),
        (3, 64) => Ok(MessageType::CookieReply),
        (4, 32) => Ok(MessageType::Keepalive),
        (4, 33..) => Ok(MessageType::Data),
        (1..=4, _) => Err(Invalid::BadSize),
        _ => Err(Invalid::BadType),
    }
}

pub(crate) fn observe(m: &mut Model, dir: usize, p: &Packet) {
    let Some((remote, msg)) = datagram(&p.data, dir) else { return };
    // A GSO or GRO batch: messages of gso_size bytes each, the last one shorter; the first
    // is judged, all are counted.
    let gso = p.gso_size as usize;
    let (len, n) = if gso > 0 && msg.len() > gso { (gso, msg.len().div_ceil(gso) as u64) } else { (msg.len(), 1) };
    let mut head = [0u8; 12];
    let have = if msg.len() >= 12 {
        12
    } else if msg.len() >= 4 {
        4
    } else {
        0
    };
    head[..have].copy_from_slice(&msg[..have]);
    let t = match classify(&head, len) {
        Ok(t) => t,
        Err(reason) => {
            if dir == DIR_RX {
                m.invalid(reason);
            }
            return;
        }
    };
    let (first, second) = (le32(&head[4..]), le32(&head[8..]));
    let mut owner: Owner = world::peer_of_endpoint(remote);
    if dir == DIR_RX {
        // From an endpoint not known: the peer of the index it names, which we gave out.
        let ours = if t == MessageType::HandshakeResponse { second } else { first };
        if owner.is_none() && t != MessageType::HandshakeInitiation {
            match m.state.indices.get(&ours) {
                Some(o) => owner = *o,
                None => return m.invalid(Invalid::UnknownIndex),
            }
        }
    } else if matches!(t, MessageType::HandshakeInitiation | MessageType::HandshakeResponse) {
        m.state.indices.insert(first, owner);
    }
    m.message(owner, dir, t, n);
    let index = |kind: Kind, value: u32| key(kind, value, [0; 16], [0; 16], (0, 0));
    match (dir == DIR_RX, t) {
        (false, MessageType::HandshakeInitiation) => m.question(index(Kind::HandshakeInitiator, first)),
        (false, MessageType::HandshakeResponse) => m.question(index(Kind::HandshakeResponder, first)),
        (true, MessageType::HandshakeResponse) => {
            m.answer(index(Kind::HandshakeInitiator, second), owner, Kind::HandshakeInitiator)
        }
        (true, MessageType::Data | MessageType::Keepalive) => {
            m.answer(index(Kind::HandshakeResponder, first), owner, Kind::HandshakeResponder);
            if let Some(peer) = owner {
                // Each message's counter (bytes 8..16), the first 64 of a batch; one the
                // packet does not hold (a batch cut short) cannot be checked.
                let checked = n.min(MAX_SEGMENTS);
                for i in 0..checked as usize {
                    let c = at(msg, i * len + 8, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                    m.transport(peer, first, c);
                }
                for _ in checked..n {
                    m.transport(peer, first, None);
                }
            }
        }
        _ => {}
    }
}
