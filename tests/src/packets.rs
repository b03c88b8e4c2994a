//! Crafted packets for BPF_PROG_TEST_RUN: raw IP, as a WireGuard interface (L3, no
//! Ethernet header) hands them to TC.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

/// An IPv4 packet of `total_len` bytes (header 20, then zeros, or a 20-byte TCP header
/// when `proto` is TCP).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; total_len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    if proto == TCP && total_len >= 40 {
        p[32] = 5 << 4; // data offset: 20 bytes
    }
    p
}

/// An IPv6 packet of `total_len` bytes (fixed header 40, then zeros, or a 20-byte TCP
/// header when `next` is TCP).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, total_len: usize) -> Vec<u8> {
    let mut p = vec![0u8; total_len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((total_len - 40) as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    if next == TCP && total_len >= 60 {
        p[52] = 5 << 4;
    }
    p
}

/// Size of `struct __sk_buff` and the offset of the fields a test run may set
/// (include/uapi/linux/bpf.h).
pub const SKB_CTX_LEN: usize = 192;
const GSO_SEGS: usize = 164;
const GSO_SIZE: usize = 176;

/// A `__sk_buff` for `ctx_in` that makes the packet a GSO super-packet of `gso_size`
/// (gso_segs left 0, as a TUN device leaves it).
pub fn gso_ctx(gso_size: u32, gso_segs: u32) -> Vec<u8> {
    let mut c = vec![0u8; SKB_CTX_LEN];
    c[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    c[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    c
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;

/// TCP options: NOP NOP TS(val, ecr), as Linux sends on every segment.
pub fn ts_option(val: u32, ecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend(val.to_be_bytes());
    o.extend(ecr.to_be_bytes());
    o
}

/// A TCP segment's header (20 bytes + options padded to 4) and `payload` zero bytes.
pub fn tcp_segment(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, options: &[u8], payload: usize) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = (((20 + opts.len()) / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend(opts);
    t.extend(std::iter::repeat_n(0u8, payload));
    t
}

/// An IPv4 packet around `l4` (protocol `proto`).
pub fn ipv4_with(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = ipv4(src, dst, proto, 20 + l4.len());
    p[20..].copy_from_slice(l4);
    p
}

/// An IPv6 packet around `l4`, optionally behind extension headers: each (next header of
/// what follows it is filled in), given as (header type, total length in bytes, a multiple
/// of 8).
pub fn ipv6_with(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, ext: &[(u8, usize)], l4: &[u8]) -> Vec<u8> {
    let ext_len: usize = ext.iter().map(|e| e.1).sum();
    let first = ext.first().map_or(proto, |e| e.0);
    let mut p = ipv6(src, dst, first, 40 + ext_len + l4.len());
    let mut off = 40;
    for (i, (_, len)) in ext.iter().enumerate() {
        p[off] = ext.get(i + 1).map_or(proto, |e| e.0);
        p[off + 1] = (len / 8 - 1) as u8;
        off += len;
    }
    p[off..].copy_from_slice(l4);
    p
}

/// An ICMP (IPv4: request 8, reply 0) or ICMPv6 (request 128, reply 129) echo message.
pub fn echo(kind: u8, id: u16, seq: u16, payload: usize) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend(id.to_be_bytes());
    m.extend(seq.to_be_bytes());
    m.extend(std::iter::repeat_n(0u8, payload));
    m
}

/// An Ethernet frame carrying an IPv4 UDP datagram (what the underlay programs see).
pub fn eth_udp4(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    f.extend(ipv4_with(*src.ip(), *dst.ip(), UDP, &udp));
    f
}

/// An Ethernet frame carrying an IPv6 UDP datagram (checksum left zero: the programs do not
/// read it).
pub fn eth_udp6(src: std::net::SocketAddrV6, dst: std::net::SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let mut ip = ipv6(*src.ip(), *dst.ip(), UDP, 48 + payload.len());
    ip[40..42].copy_from_slice(&src.port().to_be_bytes());
    ip[42..44].copy_from_slice(&dst.port().to_be_bytes());
    ip[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    ip[48..].copy_from_slice(payload);
    f.extend(ip);
    f
}

/// WireGuard messages with the right type and length (contents zero where they do not
/// matter to us).
pub mod wg {
    pub fn initiation(sender: u32) -> Vec<u8> {
        let mut m = vec![0u8; 148];
        m[0] = 1;
        m[4..8].copy_from_slice(&sender.to_le_bytes());
        m
    }

    pub fn response(sender: u32, receiver: u32) -> Vec<u8> {
        let mut m = vec![0u8; 92];
        m[0] = 2;
        m[4..8].copy_from_slice(&sender.to_le_bytes());
        m[8..12].copy_from_slice(&receiver.to_le_bytes());
        m
    }

    /// A transport data message for `plaintext` bytes (0 = a keepalive).
    pub fn data(receiver: u32, counter: u64, plaintext: usize) -> Vec<u8> {
        let mut m = vec![0u8; 32 + plaintext.div_ceil(16) * 16];
        m[0] = 4;
        m[4..8].copy_from_slice(&receiver.to_le_bytes());
        m[8..16].copy_from_slice(&counter.to_le_bytes());
        m
    }
}
