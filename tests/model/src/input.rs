//! Arbitrary bytes → packets for the four hooks. Most bytes pick among choices that make real
//! packets (a peer's address, the listen port, a WireGuard message of the right size, a TCP
//! segment answering an earlier one), so a fuzzer's mutations reach deep into the parse; one
//! packet in four is the raw bytes themselves, and any packet may have a byte overwritten,
//! so the near misses are there too. Exhausted input reads as zeros: every input is valid.

use std::net::{IpAddr, SocketAddr};

use wg_tests::packets::{self, echo, ipv4_with, ipv6_with, tcp_segment, ICMP, TCP, UDP};

use crate::world::{self, LISTEN_PORT, LOCAL_V4, LOCAL_V6, UNDERLAY_V4, UNDERLAY_V6};

/// Where a packet is handed to the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The WireGuard interface's ingress: plaintext received from a peer.
    PlainIngress,
    /// Its egress: plaintext sent to a peer.
    PlainEgress,
    /// The underlay's ingress: WireGuard datagrams arriving.
    UnderIngress,
    /// The underlay's egress: WireGuard datagrams leaving.
    UnderEgress,
}

impl Hook {
    pub fn program(self) -> &'static str {
        use wg_common::names;
        match self {
            Self::PlainIngress => names::PROG_INGRESS,
            Self::PlainEgress => names::PROG_EGRESS,
            Self::UnderIngress => names::PROG_UNDER_INGRESS,
            Self::UnderEgress => names::PROG_UNDER_EGRESS,
        }
    }

    pub fn ingress(self) -> bool {
        matches!(self, Self::PlainIngress | Self::UnderIngress)
    }
}

/// One test run: the packet and the GSO metadata BPF_PROG_TEST_RUN lets a test set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub hook: Hook,
    pub data: Vec<u8>,
    pub gso_size: u32,
    pub gso_segs: u32,
}

/// Packets per input at most: the handshake index table (an LRU of 4 × MAX_PEERS entries)
/// never has to evict, which the model would not know how to follow.
pub const MAX_PACKETS: usize = 24;
/// BPF_PROG_TEST_RUN takes at least an Ethernet header's 14 bytes, and at most ~3.5 KB.
pub const MIN_LEN: usize = 14;
pub const MAX_LEN: usize = 2048;

/// The input being read, and what it made last that an answer could answer.
struct Bytes<'a> {
    data: &'a [u8],
    /// The last plaintext packet sent (egress).
    asked: Option<Vec<u8>>,
    /// The last handshake message sent: (to whom, its type, its sender index).
    handshake: Option<(SocketAddr, u8, u32)>,
    /// The last transport message counter made: the next is mostly near it, so sessions'
    /// windows see runs, gaps, swaps and repeats.
    counter: u64,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.u8() as usize % from.len()]
    }
    fn counter(&mut self) -> u64 {
        self.counter = match self.u8() % 8 {
            0 => self.counter.saturating_sub(self.u8() as u64 % 80),
            1 => self.counter + self.u16() as u64 % 300,
            2 => self.counter,
            n => self.counter + n as u64 - 2,
        };
        self.counter
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The packets `data` stands for (at least one, at most [`MAX_PACKETS`]).
pub fn packets(data: &[u8]) -> Vec<Packet> {
    let mut b = Bytes { data, asked: None, handshake: None, counter: 0 };
    let mut out = Vec::new();
    while out.len() < MAX_PACKETS && (out.is_empty() || !b.is_empty()) {
        out.push(packet(&mut b));
    }
    out
}

fn packet(b: &mut Bytes) -> Packet {
    let c = b.u8();
    let hook = [Hook::PlainIngress, Hook::PlainEgress, Hook::UnderIngress, Hook::UnderEgress][(c & 3) as usize];
    let (gso_size, gso_segs) = if c & 0x10 != 0 { ((b.u16() % 1600) as u32, (b.u8() % 8) as u32) } else { (0, 0) };
    let mut data = if c & 0x0c == 0 {
        let n = MIN_LEN + b.u16() as usize % 600;
        b.take(n)
    } else if hook == Hook::PlainIngress && b.asked.is_some() && b.u8().is_multiple_of(2) {
        reply(b.asked.as_ref().unwrap())
    } else if matches!(hook, Hook::PlainIngress | Hook::PlainEgress) {
        let p = plaintext(b, hook.ingress());
        if hook == Hook::PlainEgress {
            b.asked = Some(p.clone());
        }
        p
    } else {
        datagram(b, hook.ingress())
    };
    if c & 0x20 != 0 {
        // A near miss: one byte anywhere overwritten.
        let at = b.u16() as usize;
        let v = b.u8();
        let n = data.len();
        data[at % n] = v;
    }
    if c & 0x40 != 0 {
        // Cut short (but never below what a test run takes).
        let keep = MIN_LEN.max(data.len().saturating_sub(1 + b.u8() as usize % 64));
        data.truncate(keep);
    }
    data.resize(data.len().clamp(MIN_LEN, MAX_LEN), 0);
    data.resize(data.len().max(test_run_min(&data)), 0);
    Packet { hook, data, gso_size, gso_segs }
}

/// The shortest packet BPF_PROG_TEST_RUN takes: it reads bytes 12–13 as an EtherType and
/// refuses (EINVAL) an IPv4 or IPv6 one without room for that IP header after the 14 bytes
/// (seen on 6.18). Real traffic can be shorter; test runs cannot, so inputs are padded.
fn test_run_min(data: &[u8]) -> usize {
    match [data[12], data[13]] {
        [0x08, 0x00] => MIN_LEN + 20,
        [0x86, 0xdd] => MIN_LEN + 40,
        _ => MIN_LEN,
    }
}

/// A plaintext IP packet between this device and a remote address: TCP (segments whose
/// sequence numbers and timestamps repeat among a few values, so answers meet questions),
/// ICMP echo, UDP, or IPv6 behind extension headers.
fn plaintext(b: &mut Bytes, ingress: bool) -> Vec<u8> {
    let v6 = b.u8() & 3 == 0;
    let l4 = transport(b, v6);
    let (proto, l4) = l4;
    if v6 {
        let remote = b.pick(&world::REMOTE_V6);
        let (src, dst) = if ingress { (remote, LOCAL_V6) } else { (LOCAL_V6, remote) };
        let ext: Vec<(u8, usize)> = match b.u8() % 6 {
            0 => vec![(0, 8)],
            1 => vec![(60, 16), (43, 8)],
            2 => vec![(51, 16)],
            3 => vec![(0, 8), (60, 8), (43, 8), (60, 8), (0, 8)],
            _ => vec![],
        };
        ipv6_with(src, dst, proto, &ext, &l4)
    } else {
        let remote = b.pick(&world::REMOTE_V4);
        let (src, dst) = if ingress { (remote, LOCAL_V4) } else { (LOCAL_V4, remote) };
        let mut p = ipv4_with(src, dst, proto, &l4);
        if b.u8().is_multiple_of(8) {
            // IPv4 options: the header grows by 4 or 8 bytes (IHL 6 or 7), NOPs.
            let extra = 4 * (1 + b.u8() as usize % 2);
            p.splice(20..20, std::iter::repeat_n(1u8, extra));
            p[0] = 0x45 + (extra / 4) as u8;
            let total = p.len() as u16;
            p[2..4].copy_from_slice(&total.to_be_bytes());
        }
        p
    }
}

/// A transport header and payload: (protocol, bytes).
fn transport(b: &mut Bytes, v6: bool) -> (u8, Vec<u8>) {
    const VALUES: [u32; 5] = [1, 100, 101, 0x8000_0000, 0];
    match b.u8() % 8 {
        0..=3 => {
            let ports = [(40000, 443), (443, 40000), (5201, 5201)];
            let (sport, dport) = b.pick(&ports);
            let mut v = || match b.u8() % 6 {
                5 => b.u32(),
                i => VALUES[i as usize],
            };
            let (seq, ack, val, ecr) = (v(), v(), v(), v());
            let flags =
                b.pick(&[packets::ACK, packets::SYN, packets::SYN | packets::ACK, packets::ACK | packets::PSH, 0x11]);
            let opts = match b.u8() % 6 {
                0 => packets::ts_option(val, ecr),
                // A SYN's usual options: MSS, SACK permitted, TS, NOP, window scale.
                1 => [&[2, 4, 5, 0xb4, 4, 2][..], &packets::ts_option(val, ecr)[2..], &[1, 3, 3, 7]].concat(),
                // BSD: MSS NOP WS NOP NOP TS SACK_PERM EOL EOL.
                2 => [&[2, 4, 5, 0xb4, 1, 3, 3, 6][..], &packets::ts_option(val, ecr), &[4, 2, 0, 0]].concat(),
                // TS behind SACK blocks, late in the options.
                3 => [&[1, 1, 5, 18][..], &[7; 16], &packets::ts_option(val, ecr)].concat(),
                4 => {
                    let n = b.u8() as usize % 41;
                    b.take(n)
                }
                _ => vec![],
            };
            let payload = b.pick(&[0, 0, 1, 100, 1400]);
            (TCP, tcp_segment(sport, dport, seq, ack, flags, &opts, payload))
        }
        4 | 5 => {
            let (request, reply) = if v6 { (128, 129) } else { (8, 0) };
            let kind = b.pick(&[request, reply, request, reply, 3, 11]);
            let id = b.pick(&[7, 7, 8]);
            let seq = b.pick(&[1, 1, 2, 0xffff]);
            let mut m = echo(kind, id, seq, b.pick(&[0, 56, 1000]));
            if b.u8().is_multiple_of(8) {
                m[1] = 1; // a code echo never has
            }
            (if v6 { 58 } else { ICMP }, m)
        }
        6 => (UDP, [&b.u32().to_be_bytes()[..], &[0, 8, 0, 0], &vec![0; b.u8() as usize]].concat()),
        _ => {
            let proto = b.u8();
            let n = b.u8() as usize;
            (proto, b.take(n))
        }
    }
}

/// An Ethernet frame with a UDP datagram between this device's listen port and a remote
/// endpoint, carrying a WireGuard message (mostly of a right type and size, indices among a
/// few values so responses and data find the handshakes they belong to).
fn datagram(b: &mut Bytes, ingress: bool) -> Vec<u8> {
    let remote = b.pick(&world::remote_endpoints());
    let ours = match b.u8() % 8 {
        0 => 51821,
        1 => b.u16(),
        _ => LISTEN_PORT,
    };
    let local = match remote.ip() {
        IpAddr::V4(_) => SocketAddr::from((UNDERLAY_V4, ours)),
        IpAddr::V6(_) => SocketAddr::from((UNDERLAY_V6, ours)),
    };
    let (src, dst) = if ingress { (remote, local) } else { (local, remote) };
    let last = b.handshake;
    let msg = match last {
        // The answer to our last handshake message: its response, or the first data of the
        // session we answered; mostly from where we sent it, else from a roamed peer.
        Some((to, t, index)) if ingress && b.u8().is_multiple_of(2) => {
            let from = if b.u8().is_multiple_of(4) { remote } else { to };
            let local = SocketAddr::new(local.ip(), LISTEN_PORT);
            let msg =
                if t == 1 { packets::wg::response(b.u32(), index) } else { packets::wg::data(index, b.counter(), 16) };
            return match (from, local) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => packets::eth_udp4(s, d, &msg),
                (s, d) => eth_udp6(s, d, &msg),
            };
        }
        _ => message(b),
    };
    if !ingress && matches!(msg.first(), Some(1 | 2)) && msg.len() >= 8 {
        b.handshake = Some((remote, msg[0], u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]])));
    }
    let mut f = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => packets::eth_udp4(s, d, &msg),
        (s, d) => eth_udp6(s, d, &msg),
    };
    match b.u8() % 16 {
        // An 802.1Q tag before the IP header.
        0 => f.splice(12..12, [0x81, 0x00, 0x00, 0x05]).for_each(drop),
        // A fragment (more fragments set).
        1 if f[12..14] == [8, 0] => f[14 + 6] = 0x20,
        // IPv4 options (IHL 6).
        2 if f[12..14] == [8, 0] => {
            f.splice(34..34, [1, 1, 1, 1]).for_each(drop);
            f[14] = 0x46;
        }
        // Not UDP.
        3 => {
            let at = if f[12..14] == [8, 0] { 14 + 9 } else { 14 + 6 };
            f[at] = 6;
        }
        _ => {}
    }
    f
}

fn message(b: &mut Bytes) -> Vec<u8> {
    const INDICES: [u32; 4] = [1, 2, 0xaabb_ccdd, 0];
    let mut index = || match b.u8() % 5 {
        4 => b.u32(),
        i => INDICES[i as usize],
    };
    let (i1, i2) = (index(), index());
    let mut m = match b.u8() % 8 {
        0 => packets::wg::initiation(i1),
        1 => packets::wg::response(i1, i2),
        2 => {
            let mut m = vec![0u8; 64];
            m[0] = 3;
            m[4..8].copy_from_slice(&i1.to_le_bytes());
            m
        }
        3 => packets::wg::data(i1, b.counter(), 0),
        4 => packets::wg::data(i1, b.u32() as u64, b.pick(&[1, 16, 84, 1400])),
        5 => packets::wg::data(i1, b.counter(), b.pick(&[1, 16, 84, 1400])),
        6 => {
            let n = b.u8() as usize;
            b.take(n)
        }
        _ => {
            let mut m = packets::wg::data(i1, 1, 64);
            let n = b.pick(&[3, 4, 31, 33, 91, 93, 147, 149]);
            m.resize(n, 0);
            m
        }
    };
    if b.u8().is_multiple_of(16) && m.len() >= 4 {
        m[1 + b.u8() as usize % 3] = 1; // a reserved byte set
    }
    m
}

/// The answer a peer would send to plaintext packet `q` (as this generator makes them):
/// addresses and ports turned round, a SYN acknowledged with SYN-ACK, its timestamp echoed,
/// an echo request replied to.
fn reply(q: &[u8]) -> Vec<u8> {
    let mut p = q.to_vec();
    let (v6, mut l4, mut proto) = match p[0] >> 4 {
        6 if p.len() >= 40 => (true, 40, p[6]),
        4 if p.len() >= 20 => (false, (p[0] & 0x0f) as usize * 4, p[9]),
        _ => return p,
    };
    let (a, n) = if v6 { (8, 16) } else { (12, 4) };
    for i in 0..n {
        p.swap(a + i, a + n + i);
    }
    while v6 && matches!(proto, 0 | 43 | 60 | 51) && l4 + 2 <= p.len() {
        proto = p[l4];
        l4 += if p[l4] == 51 { (p[l4 + 1] as usize + 2) * 4 } else { (p[l4 + 1] as usize + 1) * 8 };
    }
    match proto {
        TCP if l4 + 20 <= p.len() => {
            for i in 0..2 {
                p.swap(l4 + i, l4 + 2 + i);
            }
            if p[l4 + 13] & packets::SYN != 0 {
                let seq = u32::from_be_bytes(p[l4 + 4..l4 + 8].try_into().unwrap());
                p[l4 + 8..l4 + 12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
                p[l4 + 13] = packets::SYN | packets::ACK;
            }
            // The timestamp option, wherever it is: TSecr = their TSval.
            let end = (l4 + (p[l4 + 12] >> 4) as usize * 4).min(p.len());
            let mut i = l4 + 20;
            while i + 10 <= end {
                match p[i] {
                    0 => break,
                    1 => i += 1,
                    8 => {
                        p.copy_within(i + 2..i + 6, i + 6);
                        break;
                    }
                    _ => i += (p[i + 1] as usize).max(2),
                }
            }
        }
        1 | 58 if l4 < p.len() => p[l4] = if v6 { 129 } else { 0 },
        _ => {}
    }
    p
}

/// An Ethernet frame carrying an IPv6 UDP datagram (IPv4 endpoints mapped).
pub fn eth_udp6(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    f.extend(ipv6_with(v6(src.ip()), v6(dst.ip()), UDP, &[], &udp));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_makes_packets_a_test_run_takes() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..2000 {
            let data: Vec<u8> = (0..n % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let ps = packets(&data);
            assert!(!ps.is_empty() && ps.len() <= MAX_PACKETS);
            assert!(ps.iter().all(|p| (MIN_LEN..=MAX_LEN).contains(&p.data.len())));
        }
        assert_eq!(packets(&[]).len(), 1, "the empty input is one packet of zeros");
    }
}
