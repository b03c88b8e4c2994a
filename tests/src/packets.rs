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
