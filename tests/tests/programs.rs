//! The kernel programs, run through BPF_PROG_TEST_RUN on crafted packets, with the maps
//! filled by the collector's own sync code. Needs root (CAP_BPF).

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use wg_collector::{
    bpf::{DeviceProbe, ProbeOptions},
    wireguard::{Key, Peer},
};
use wg_common::{names, Counter, PeerCounters, Unattributed, DIR_RX, DIR_TX, TC_NEXT};
use wg_tests::packets::{gso_ctx, ipv4, ipv6, ICMP, TCP, UDP};

fn peer(n: u8, nets: &[&str]) -> Peer {
    let mut p = Peer::new(Key([n; 32]));
    p.allowed_ips = nets.iter().map(|s| s.parse::<IpNet>().unwrap()).collect();
    p
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Runs `pkt` through a program `repeat` times and checks it was handed on unchanged.
fn run(probe: &mut DeviceProbe, prog: &str, pkt: &[u8], ctx: Option<&[u8]>, repeat: u32) {
    let mut out = vec![0u8; pkt.len() + 64];
    let prog = probe.program(prog).unwrap();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, TC_NEXT as u32, "programs must pass every packet on");
    assert_eq!(&out[..r.data_size_out as usize], pkt, "programs must not alter packets");
}

fn counters(probe: &DeviceProbe, n: u8) -> PeerCounters {
    let one = probe.peer_counters(&Key([n; 32])).unwrap().expect("peer has a slot");
    // The batch read the collector uses (BPF_MAP_LOOKUP_BATCH) agrees with the one-by-one read.
    assert_eq!(probe.all_peer_counters().unwrap().get(&Key([n; 32])), Some(&one));
    one
}

fn c(packets: u64, bytes: u64) -> Counter {
    Counter { packets, bytes }
}

fn unattributed(probe: &DeviceProbe, dir: usize, r: Unattributed) -> Counter {
    probe.unattributed().unwrap()[dir][r as usize]
}

fn probe_with(peers: &[Peer], max_peers: u32) -> DeviceProbe {
    let mut p =
        DeviceProbe::load(ProbeOptions { max_peers, ..Default::default() }, None).expect("load programs (root needed)");
    p.sync(peers).unwrap();
    p
}

#[test]
fn attributes_ipv4_by_prefix_and_direction() {
    let peers = [peer(1, &["10.1.2.0/24"]), peer(2, &["10.9.9.9/32"])];
    let mut p = probe_with(&peers, 16);
    // Ingress is attributed by source address, egress by destination.
    run(&mut p, names::PROG_INGRESS, &ipv4(v4("10.1.2.77"), v4("10.0.0.1"), ICMP, 84), None, 1);
    run(&mut p, names::PROG_INGRESS, &ipv4(v4("10.1.2.1"), v4("10.0.0.1"), UDP, 100), None, 1);
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.9.9.9"), ICMP, 84), None, 3);
    // The same addresses the other way round belong to nobody.
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.9.9.9"), v4("10.0.0.1"), ICMP, 84), None, 1);
    // Just outside the /24 and next to the /32.
    run(&mut p, names::PROG_INGRESS, &ipv4(v4("10.1.3.1"), v4("10.0.0.1"), ICMP, 60), None, 1);
    run(&mut p, names::PROG_INGRESS, &ipv4(v4("10.9.9.8"), v4("10.0.0.1"), ICMP, 60), None, 1);

    assert_eq!(counters(&p, 1).dir[DIR_RX], c(2, 184));
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(0, 0));
    assert_eq!(counters(&p, 2).dir[DIR_TX], c(3, 252));
    assert_eq!(counters(&p, 2).dir[DIR_RX], c(0, 0));
    assert_eq!(unattributed(&p, DIR_RX, Unattributed::NoPeer), c(2, 120));
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::NoPeer), c(1, 84));
}

#[test]
fn attributes_ipv6_by_prefix() {
    let peers = [peer(1, &["fd00:1::/64"]), peer(2, &["fd00:2::5/128", "10.2.0.0/16"])];
    let mut p = probe_with(&peers, 16);
    run(&mut p, names::PROG_INGRESS, &ipv6(v6("fd00:1::abcd"), v6("fd00::1"), ICMP, 104), None, 1);
    run(&mut p, names::PROG_EGRESS, &ipv6(v6("fd00::1"), v6("fd00:2::5"), UDP, 200), None, 2);
    run(&mut p, names::PROG_EGRESS, &ipv6(v6("fd00::1"), v6("fd00:2::6"), UDP, 200), None, 1);
    run(&mut p, names::PROG_INGRESS, &ipv6(v6("fd00:1:0:1::1"), v6("fd00::1"), UDP, 48), None, 1);
    assert_eq!(counters(&p, 1).dir[DIR_RX], c(1, 104));
    assert_eq!(counters(&p, 2).dir[DIR_TX], c(2, 400));
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::NoPeer), c(1, 200));
    assert_eq!(unattributed(&p, DIR_RX, Unattributed::NoPeer), c(1, 48));
}

#[test]
fn counts_non_ip_and_truncated_packets_and_passes_them() {
    let mut p = probe_with(&[peer(1, &["0.0.0.0/0", "::/0"])], 16);
    // Version nibble 0 and 7: not IP.
    run(&mut p, names::PROG_INGRESS, &[0u8; 60], None, 1);
    let mut junk = vec![0x70u8; 30];
    junk[1] = 1;
    run(&mut p, names::PROG_EGRESS, &junk, None, 1);
    // IPv4 with only 16 bytes; IPv4 whose IHL says 60 bytes in a 24-byte packet; IPv6 of 30.
    let mut short4 = ipv4(v4("10.0.0.1"), v4("10.0.0.2"), UDP, 20);
    short4.truncate(16);
    run(&mut p, names::PROG_INGRESS, &short4, None, 1);
    let mut bad_ihl = ipv4(v4("10.0.0.1"), v4("10.0.0.2"), UDP, 24);
    bad_ihl[0] = 0x4f;
    run(&mut p, names::PROG_INGRESS, &bad_ihl, None, 1);
    let mut short6 = ipv6(v6("fd00::1"), v6("fd00::2"), UDP, 40);
    short6.truncate(30);
    run(&mut p, names::PROG_EGRESS, &short6, None, 1);

    assert_eq!(unattributed(&p, DIR_RX, Unattributed::NotIp), c(1, 60));
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::NotIp), c(1, 30));
    assert_eq!(unattributed(&p, DIR_RX, Unattributed::Truncated), c(2, 40));
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::Truncated), c(1, 30));
    assert_eq!(counters(&p, 1), PeerCounters::default(), "nothing malformed reaches a peer");
}

#[test]
fn counts_gso_super_packets_as_their_segments() {
    let mut p = probe_with(&[peer(1, &["10.1.0.0/16", "fd00:1::/64"])], 16);
    // TCP over IPv4: 40 bytes of headers + 2900 payload, cut at 1000: 3 segments, each
    // with its own headers on the wire.
    let pkt = ipv4(v4("10.0.0.1"), v4("10.1.0.2"), TCP, 2940);
    run(&mut p, names::PROG_EGRESS, &pkt, Some(&gso_ctx(1000, 0)), 1);
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(3, 2940 + 2 * 40));
    // TCP over IPv6, an exact multiple: 60 + 3000 at 1000 → 3 segments. (A test run takes
    // at most about 3.5 KB of data, a page less head- and tailroom.)
    let pkt = ipv6(v6("fd00:1::9"), v6("fd00::1"), TCP, 3060);
    run(&mut p, names::PROG_INGRESS, &pkt, Some(&gso_ctx(1000, 0)), 1);
    assert_eq!(counters(&p, 1).dir[DIR_RX], c(3, 3060 + 2 * 60));
    // The kernel's own gso_segs does not override the computed count for TCP.
    let pkt = ipv6(v6("fd00:1::9"), v6("fd00::1"), TCP, 2060);
    run(&mut p, names::PROG_INGRESS, &pkt, Some(&gso_ctx(500, 4)), 1);
    assert_eq!(counters(&p, 1).dir[DIR_RX], c(3 + 4, 3060 + 120 + 2060 + 3 * 60));
    // UDP (USO): 28 + 2500 at 1200 → 3.
    let pkt = ipv4(v4("10.0.0.1"), v4("10.1.0.3"), UDP, 2528);
    run(&mut p, names::PROG_EGRESS, &pkt, Some(&gso_ctx(1200, 0)), 1);
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(3 + 3, 2940 + 80 + 2528 + 2 * 28));
}

#[test]
fn repeated_runs_count_every_packet() {
    let mut p = probe_with(&[peer(1, &["10.1.0.0/16"])], 16);
    run(&mut p, names::PROG_INGRESS, &ipv4(v4("10.1.0.9"), v4("10.0.0.1"), UDP, 128), None, 10_000);
    assert_eq!(counters(&p, 1).dir[DIR_RX], c(10_000, 1_280_000));
}

#[test]
fn sync_moves_prefixes_and_a_reused_slot_starts_from_zero() {
    let mut p = probe_with(&[peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])], 2);
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.2.0.1"), UDP, 100), None, 5);
    assert_eq!(counters(&p, 2).dir[DIR_TX], c(5, 500));

    // An allowed IP moves from peer 1 to peer 2.
    p.sync(&[peer(1, &[]), peer(2, &["10.2.0.0/16", "10.1.0.0/16"])]).unwrap();
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.1.0.1"), UDP, 100), None, 1);
    assert_eq!(counters(&p, 2).dir[DIR_TX], c(6, 600));
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(0, 0));

    // Peer 2 goes; peer 3 comes and, with two slots only, gets peer 2's slot: from zero.
    p.sync(&[peer(1, &["10.1.0.0/16"])]).unwrap();
    assert!(p.peer_counters(&Key([2; 32])).unwrap().is_none());
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.2.0.1"), UDP, 100), None, 1);
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::NoPeer), c(1, 100), "removed prefixes match nobody");
    p.sync(&[peer(1, &["10.1.0.0/16"]), peer(3, &["10.3.0.0/16"])]).unwrap();
    assert_eq!(counters(&p, 3), PeerCounters::default());
    assert_eq!(p.peers(), 2);
    // No slot is left for a third peer: the error says what to raise.
    let err = p.sync(&[peer(1, &[]), peer(3, &[]), peer(4, &[])]).unwrap_err();
    assert!(format!("{err:#}").contains("--bpf.max-peers"), "{err:#}");
}

#[test]
fn a_host_address_beats_the_prefix_that_contains_it() {
    // WireGuard routes by longest match: 10.5.0.7 belongs to peer 2 though peer 1 has the /16.
    let peers = [peer(1, &["10.5.0.0/16", "fd05::/64"]), peer(2, &["10.5.0.7/32", "fd05::7/128"])];
    let mut p = probe_with(&peers, 16);
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.5.0.7"), UDP, 100), None, 2);
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.5.0.8"), UDP, 100), None, 3);
    run(&mut p, names::PROG_EGRESS, &ipv6(v6("fd00::1"), v6("fd05::7"), UDP, 100), None, 1);
    run(&mut p, names::PROG_EGRESS, &ipv6(v6("fd00::1"), v6("fd05::8"), UDP, 100), None, 4);
    assert_eq!(counters(&p, 2).dir[DIR_TX], c(3, 300));
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(7, 700));
    // The host address goes back to the /16 when peer 2 lets it go.
    p.sync(&[peers[0].clone(), peer(2, &[])]).unwrap();
    run(&mut p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4("10.5.0.7"), UDP, 100), None, 1);
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(8, 800));
}

/// The host block (the /32s of the busiest /16 in an array) answers as the hash does,
/// moves when most peers are in another /16, and forgets removed peers.
#[test]
fn host_block_follows_the_busiest_16_and_agrees_with_the_hash() {
    let mut peers = vec![
        peer(1, &["10.1.0.1/32"]),
        peer(2, &["10.1.0.2/32"]),
        peer(3, &["10.1.200.3/32"]),
        peer(4, &["10.2.0.1/32"]),
        peer(5, &["10.1.5.0/24"]),
    ];
    let mut p = probe_with(&peers, 64);
    assert_eq!(p.host_block(), Some(v4("10.1.0.0")), "the /16 with the most /32s");
    let out = |p: &mut DeviceProbe, to: &str, n: u32| {
        run(p, names::PROG_EGRESS, &ipv4(v4("10.0.0.1"), v4(to), UDP, 100), None, n)
    };
    out(&mut p, "10.1.0.1", 1); // block
    out(&mut p, "10.1.200.3", 2); // block
    out(&mut p, "10.2.0.1", 3); // hash: same low 16 bits as 10.1.0.1, other /16
    out(&mut p, "10.1.5.9", 4); // in the block's /16 but no host: the trie
    out(&mut p, "10.1.0.9", 1); // nobody's
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(1, 100));
    assert_eq!(counters(&p, 3).dir[DIR_TX], c(2, 200));
    assert_eq!(counters(&p, 4).dir[DIR_TX], c(3, 300));
    assert_eq!(counters(&p, 5).dir[DIR_TX], c(4, 400));
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::NoPeer), c(1, 100));

    // 7 more in 10.2/16: 8 there against 3 in 10.1/16, over twice as many: the block moves.
    let more: Vec<String> = (10..17).map(|n| format!("10.2.1.{n}/32")).collect();
    peers.extend(more.iter().enumerate().map(|(i, net)| peer(10 + i as u8, &[net.as_str()])));
    p.sync(&peers).unwrap();
    assert_eq!(p.host_block(), Some(v4("10.2.0.0")));
    out(&mut p, "10.1.0.1", 1); // now by hash; index 1 of the block is 10.2.0.1's
    out(&mut p, "10.2.0.1", 1);
    out(&mut p, "10.2.1.12", 5);
    assert_eq!(counters(&p, 1).dir[DIR_TX], c(2, 200));
    assert_eq!(counters(&p, 4).dir[DIR_TX], c(4, 400));
    assert_eq!(counters(&p, 12).dir[DIR_TX], c(5, 500));

    // A removed peer leaves nothing behind in the block, nor does its /32 moved to a peer.
    peers.retain(|x| x.public_key != Key([4; 32]) && x.public_key != Key([12; 32]));
    peers.push(peer(4, &["10.2.1.12/32"]));
    p.sync(&peers).unwrap();
    out(&mut p, "10.2.0.1", 1);
    out(&mut p, "10.2.1.12", 2);
    assert_eq!(unattributed(&p, DIR_TX, Unattributed::NoPeer), c(2, 200));
    assert_eq!(counters(&p, 4).dir[DIR_TX], c(6, 600), "10.2.1.12 is peer 4's now");
}
