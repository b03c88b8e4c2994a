//! The WireGuard interface's programs: a plaintext IP packet (no Ethernet header) is given
//! to the peer whose allowed IPs hold its remote address (source on ingress, destination on
//! egress), counted as the segments it stands for on the wire, and, if TCP or ICMP echo, may
//! ask or answer a round-trip question.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wg_collector::wireguard::Key;
use wg_common::{latency::Kind, Unattributed, DIR_RX};

use crate::{input::Packet, model::Model, pending::key, world};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn at(p: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    p.get(off..off.checked_add(n)?)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

struct Ip {
    hdr_len: usize,
    proto: u8,
    v6: bool,
    remote: IpAddr,
    /// Source and destination, IPv4 mapped into IPv6, in the packet's order.
    src: [u8; 16],
    dst: [u8; 16],
}

fn mapped(a: &[u8]) -> [u8; 16] {
    match a.len() {
        4 => Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_ipv6_mapped().octets(),
        _ => a.try_into().unwrap(),
    }
}

fn parse(p: &[u8], dir: usize) -> Result<Ip, Unattributed> {
    if p.len() < 20 {
        // Too short for any IP header: junk unless it claims to be IP.
        return Err(match p.first().map(|b| b >> 4) {
            Some(4 | 6) => Unattributed::Truncated,
            _ => Unattributed::NotIp,
        });
    }
    match p[0] >> 4 {
        4 => {
            let ihl = (p[0] & 0x0f) as usize * 4;
            if ihl < 20 || ihl > p.len() {
                return Err(Unattributed::Truncated);
            }
            let (src, dst) = (&p[12..16], &p[16..20]);
            let remote = if dir == DIR_RX { src } else { dst };
            let remote = IpAddr::from(<[u8; 4]>::try_from(remote).unwrap());
            Ok(Ip { hdr_len: ihl, proto: p[9], v6: false, remote, src: mapped(src), dst: mapped(dst) })
        }
        6 => {
            if p.len() < 40 {
                return Err(Unattributed::Truncated);
            }
            let (src, dst) = (&p[8..24], &p[24..40]);
            let remote = if dir == DIR_RX { src } else { dst };
            let remote = IpAddr::from(Ipv6Addr::from(<[u8; 16]>::try_from(remote).unwrap()));
            Ok(Ip { hdr_len: 40, proto: p[6], v6: true, remote, src: mapped(src), dst: mapped(dst) })
        }
        _ => Err(Unattributed::NotIp),
    }
}

/// The segments (and their bytes, each with its own copy of the headers) a GSO packet stands
/// for; a packet without GSO is itself. A TUN device leaves gso_segs 0, so the count comes
/// from the transport header where there is one.
fn segments(p: &Packet, ip: &Ip) -> (u64, u64) {
    let len = p.data.len() as u64;
    if p.gso_size == 0 {
        return (1, len);
    }
    let l4 = match ip.proto {
        TCP => at(&p.data, ip.hdr_len + 12, 1).map_or(0, |d| (d[0] >> 4) as u64 * 4),
        UDP => 8,
        _ => 0,
    };
    let hdr = ip.hdr_len as u64 + l4;
    let segs = if l4 == 0 {
        p.gso_segs.max(1) as u64
    } else if len > hdr {
        (len - hdr).div_ceil(p.gso_size as u64)
    } else {
        1
    };
    let segs = segs.max(1);
    (segs, len + (segs - 1) * hdr)
}

pub(crate) fn observe(m: &mut Model, dir: usize, p: &Packet) {
    let ip = match parse(&p.data, dir) {
        Ok(ip) => ip,
        Err(reason) => return m.plaintext(dir, Err(reason), 1, p.data.len() as u64),
    };
    let (packets, bytes) = segments(p, &ip);
    let Some(peer) = world::peer_of_address(ip.remote) else {
        return m.plaintext(dir, Err(Unattributed::NoPeer), packets, bytes);
    };
    m.plaintext(dir, Ok(peer), packets, bytes);
    let Some((l4, proto)) = transport(&p.data, &ip) else { return };
    let (local, remote) = if dir == DIR_RX { (ip.dst, ip.src) } else { (ip.src, ip.dst) };
    let flow = Flow { dir, local, remote, peer };
    match proto {
        TCP => tcp(m, &flow, &p.data, l4),
        ICMP if !ip.v6 => echo(m, &flow, &p.data, l4, (8, 0)),
        ICMPV6 if ip.v6 => echo(m, &flow, &p.data, l4, (128, 129)),
        _ => {}
    }
}

/// The transport header: after IPv4's IHL, or after up to four IPv6 extension headers
/// (hop-by-hop, routing, destination options: (len + 1) · 8 bytes; AH: (len + 2) · 4).
/// `None` when an extension header is cut off.
fn transport(p: &[u8], ip: &Ip) -> Option<(usize, u8)> {
    let (mut off, mut next) = (ip.hdr_len, ip.proto);
    if ip.v6 {
        for _ in 0..4 {
            let len = match next {
                0 | 43 | 60 => |l: u8| (l as usize + 1) * 8,
                51 => |l: u8| (l as usize + 2) * 4,
                _ => break,
            };
            let h = at(p, off, 2)?;
            next = h[0];
            off += len(h[1]);
        }
    }
    Some((off, next))
}

/// TCP options: the timestamp option (TSval, TSecr) where the walk finds it. The walk reads
/// at most 40 bytes and 8 options, and only as far as the options are held by the header
/// (data offset) and, from those the programs read, whichever fixed size the packet holds:
/// 40, 20 or 12 bytes (the verifier wants constant lengths; the common layouts fit).
fn timestamps(p: &[u8], l4: usize, optlen: usize) -> Option<(u32, u32)> {
    let avail = p.len().saturating_sub(l4 + 20);
    let read = [40, 20, 12].into_iter().find(|n| *n <= avail)?;
    let opts = at(p, l4 + 20, read)?;
    let len = optlen.min(read);
    let mut i = 0;
    for _ in 0..8 {
        if i + 10 > len {
            return None;
        }
        match opts[i] {
            0 => return None,
            1 => i += 1,
            8 => return (opts[i + 1] == 10).then(|| (be32(&opts[i + 2..]), be32(&opts[i + 6..]))),
            _ => match opts[i + 1] {
                n if n < 2 => return None,
                n => i += n as usize,
            },
        }
    }
    None
}

/// A packet's flow as its question's key has it (IPv4 mapped), and its peer.
#[derive(Clone, Copy)]
struct Flow {
    dir: usize,
    local: [u8; 16],
    remote: [u8; 16],
    peer: Key,
}

fn tcp(m: &mut Model, f: &Flow, p: &[u8], l4: usize) {
    let Flow { dir, local, remote, peer } = *f;
    let Some(h) = at(p, l4, 20) else { return };
    let (sport, dport) = (u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]]));
    let (seq, ack) = (be32(&h[4..]), be32(&h[8..]));
    let optlen = ((h[12] >> 4) as usize * 4).saturating_sub(20);
    let (syn, is_ack) = (h[13] & 0x02 != 0, h[13] & 0x10 != 0);
    let ts = if optlen > 0 { timestamps(p, l4, optlen) } else { None };
    if dir == DIR_RX {
        let ports = (dport, sport);
        if syn && is_ack {
            m.answer(key(Kind::TcpSyn, ack.wrapping_sub(1), local, remote, ports), Some(peer), Kind::TcpSyn);
        }
        if let Some((_, ecr)) = ts.filter(|t| t.1 != 0) {
            m.answer(key(Kind::TcpTs, ecr, local, remote, ports), Some(peer), Kind::TcpTs);
        }
    } else {
        let ports = (sport, dport);
        if syn && !is_ack {
            m.question(key(Kind::TcpSyn, seq, local, remote, ports));
        }
        if let Some((val, _)) = ts {
            m.question(key(Kind::TcpTs, val, local, remote, ports));
        }
    }
}

fn echo(m: &mut Model, f: &Flow, p: &[u8], l4: usize, (request, reply): (u8, u8)) {
    let Flow { dir, local, remote, peer } = *f;
    let Some(h) = at(p, l4, 8) else { return };
    let wanted = if dir == DIR_RX { reply } else { request };
    if h[0] != wanted || h[1] != 0 {
        return;
    }
    let k = key(Kind::Icmp, be32(&h[4..]), local, remote, (0, 0));
    if dir == DIR_RX {
        m.answer(k, Some(peer), Kind::Icmp);
    } else {
        m.question(k);
    }
}
