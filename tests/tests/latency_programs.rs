//! Round-trip matching in the kernel programs, through BPF_PROG_TEST_RUN: a question run
//! through the egress program, its answer through the ingress program, one sample in the
//! peer's histogram. Needs root.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    thread::sleep,
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use wg_collector::{
    bpf::{DeviceProbe, ProbeOptions},
    wireguard::{Key, Peer},
};
use wg_common::{
    latency::{Kind, PendingKey},
    names,
};
use wg_tests::packets::*;

const ME4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const ME6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 2);
const PEER: Key = Key([7; 32]);

fn probe() -> DeviceProbe {
    let mut p = DeviceProbe::load(ProbeOptions { max_peers: 16, ..Default::default() }, None)
        .expect("load programs (root needed)");
    let mut peer = Peer::new(PEER);
    peer.allowed_ips = vec!["10.1.0.0/16".parse::<IpNet>().unwrap(), "fd01::/64".parse().unwrap()];
    p.sync(&[peer]).unwrap();
    p
}

fn send(p: &mut DeviceProbe, prog: &str, pkt: &[u8]) {
    let r = p.program(prog).unwrap().test_run(TestRunOptions { data_in: Some(pkt), ..Default::default() }).unwrap();
    assert_eq!(r.return_value, wg_common::TC_NEXT as u32);
}

fn out(p: &mut DeviceProbe, pkt: &[u8]) {
    send(p, names::PROG_EGRESS, pkt)
}

fn back(p: &mut DeviceProbe, pkt: &[u8]) {
    send(p, names::PROG_INGRESS, pkt)
}

/// (samples, sum in ns) of one kind for the peer.
fn samples(p: &DeviceProbe, kind: Kind) -> (u64, u64) {
    p.histograms()
        .unwrap()
        .iter()
        .filter(|(peer, k, _)| *peer == Some(PEER) && k.kind == kind as u16)
        .fold((0, 0), |(c, s), (_, _, v)| (c + v.count, s + v.sum_ns))
}

#[test]
fn tcp_timestamps_match_first_echo_once() {
    let mut p = probe();
    let seg = |sport, dport, val, ecr, payload| {
        tcp_segment(sport, dport, 1000, 2000, ACK | PSH, &ts_option(val, ecr), payload)
    };
    // Two segments in one timestamp tick: the first one is the question.
    let asked = std::time::Instant::now();
    out(&mut p, &ipv4_with(ME4, PEER4, TCP, &seg(40000, 443, 555, 9, 100)));
    sleep(Duration::from_millis(2));
    out(&mut p, &ipv4_with(ME4, PEER4, TCP, &seg(40000, 443, 555, 9, 100)));
    assert_eq!(p.latency_stats().unwrap().recorded, 1);
    // An echo on another flow, or of another value, answers nothing.
    back(&mut p, &ipv4_with(PEER4, ME4, TCP, &seg(443, 40001, 77, 555, 0)));
    back(&mut p, &ipv4_with(PEER4, ME4, TCP, &seg(443, 40000, 77, 556, 0)));
    assert_eq!(samples(&p, Kind::TcpTs).0, 0);
    // The echo: one sample of at least the 2 ms slept; a second echo of the same value: none.
    back(&mut p, &ipv4_with(PEER4, ME4, TCP, &seg(443, 40000, 77, 555, 0)));
    back(&mut p, &ipv4_with(PEER4, ME4, TCP, &seg(443, 40000, 78, 555, 0)));
    let most = asked.elapsed().as_nanos() as u64;
    let (n, sum) = samples(&p, Kind::TcpTs);
    assert_eq!(n, 1);
    // Between the 2 ms slept and the whole exchange as timed here.
    assert!(sum >= 2_000_000 && sum <= most, "{sum} ns, at most {most}");
    assert_eq!(p.latency_stats().unwrap().matched, 1);
}

#[test]
fn tcp_timestamps_found_in_every_usual_option_layout() {
    let mut p = probe();
    let ts = |v: u32, e: u32| {
        let mut o = vec![8, 10];
        o.extend(v.to_be_bytes());
        o.extend(e.to_be_bytes());
        o
    };
    let layouts: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        // Linux SYN: MSS, SACK_PERM, TS, NOP, WS.
        ("linux syn", [vec![2, 4, 5, 0xb4, 4, 2], ts(101, 0), vec![1, 3, 3, 7]].concat(), ts_option(1, 101)),
        // BSD/Windows SYN: MSS, NOP, WS, NOP, NOP, TS, SACK_PERM, EOL.
        ("bsd syn", [vec![2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1], ts(102, 0), vec![4, 2, 0, 0]].concat(), ts_option(1, 102)),
        // An ACK with SACK blocks after NOP NOP TS.
        (
            "sack",
            [ts_option(103, 1), vec![1, 1, 5, 10], vec![0; 8]].concat(),
            [ts_option(2, 103), vec![1, 1, 5, 10], vec![0; 8]].concat(),
        ),
        // TS alone, then EOL.
        ("ts only", [ts(104, 0), vec![0, 0]].concat(), ts_option(3, 104)),
    ];
    for (i, (name, q, a)) in layouts.iter().enumerate() {
        let port = 41000 + i as u16;
        out(&mut p, &ipv4_with(ME4, PEER4, TCP, &tcp_segment(port, 80, 5, 0, ACK, q, 0)));
        back(&mut p, &ipv4_with(PEER4, ME4, TCP, &tcp_segment(80, port, 9, 6, ACK, a, 0)));
        assert_eq!(samples(&p, Kind::TcpTs).0, i as u64 + 1, "{name}");
    }
    // Without timestamps (and a bare header, and one whose data offset lies): no question.
    let before = p.latency_stats().unwrap().recorded;
    out(&mut p, &ipv4_with(ME4, PEER4, TCP, &tcp_segment(42000, 80, 5, 0, ACK, &[2, 4, 5, 0xb4], 10)));
    out(&mut p, &ipv4_with(ME4, PEER4, TCP, &tcp_segment(42000, 80, 5, 0, ACK, &[], 0)));
    let mut lying = ipv4_with(ME4, PEER4, TCP, &tcp_segment(42000, 80, 5, 0, ACK, &[], 0));
    lying[32] = 15 << 4; // claims 40 bytes of options that are not there
    out(&mut p, &lying);
    let mut cut = ipv4_with(ME4, PEER4, TCP, &tcp_segment(42000, 80, 5, 0, ACK, &ts_option(9, 9), 0));
    cut.truncate(30); // the TCP header itself is cut
    out(&mut p, &cut);
    assert_eq!(p.latency_stats().unwrap().recorded, before);
}

#[test]
fn syn_is_answered_by_syn_ack() {
    let mut p = probe();
    out(&mut p, &ipv4_with(ME4, PEER4, TCP, &tcp_segment(43000, 22, 7777, 0, SYN, &[2, 4, 5, 0xb4], 0)));
    // A SYN-ACK that acknowledges another sequence number answers nothing.
    back(&mut p, &ipv4_with(PEER4, ME4, TCP, &tcp_segment(22, 43000, 1, 9999, SYN | ACK, &[2, 4, 5, 0xb4], 0)));
    assert_eq!(samples(&p, Kind::TcpSyn).0, 0);
    back(&mut p, &ipv4_with(PEER4, ME4, TCP, &tcp_segment(22, 43000, 1, 7778, SYN | ACK, &[2, 4, 5, 0xb4], 0)));
    assert_eq!(samples(&p, Kind::TcpSyn).0, 1);
}

#[test]
fn icmp_and_icmpv6_echo_match_by_id_and_sequence() {
    let mut p = probe();
    out(&mut p, &ipv4_with(ME4, PEER4, ICMP, &echo(8, 0x1234, 1, 56)));
    out(&mut p, &ipv4_with(ME4, PEER4, ICMP, &echo(8, 0x1234, 2, 56)));
    back(&mut p, &ipv4_with(PEER4, ME4, ICMP, &echo(0, 0x1234, 2, 56)));
    back(&mut p, &ipv4_with(PEER4, ME4, ICMP, &echo(0, 0x9999, 1, 56)));
    assert_eq!(samples(&p, Kind::Icmp).0, 1);
    // An echo request coming in (someone pings us) is no question of ours.
    back(&mut p, &ipv4_with(PEER4, ME4, ICMP, &echo(8, 0x1234, 3, 56)));
    out(&mut p, &ipv4_with(ME4, PEER4, ICMP, &echo(0, 0x1234, 3, 56)));
    assert_eq!(samples(&p, Kind::Icmp).0, 1);

    out(&mut p, &ipv6_with(ME6, PEER6, 58, &[], &echo(128, 7, 1, 56)));
    back(&mut p, &ipv6_with(PEER6, ME6, 58, &[], &echo(129, 7, 1, 56)));
    assert_eq!(samples(&p, Kind::Icmp).0, 2);
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let mut p = probe();
    // Hop-by-hop (8 bytes) and destination options (16 bytes) before TCP.
    let ext = [(0u8, 8usize), (60, 16)];
    out(&mut p, &ipv6_with(ME6, PEER6, TCP, &ext, &tcp_segment(44000, 80, 1, 0, ACK, &ts_option(500, 1), 0)));
    back(&mut p, &ipv6_with(PEER6, ME6, TCP, &[(0, 8)], &tcp_segment(80, 44000, 1, 1, ACK, &ts_option(2, 500), 0)));
    assert_eq!(samples(&p, Kind::TcpTs).0, 1);
    // A fragment header stops the walk: no question.
    let before = p.latency_stats().unwrap().recorded;
    out(&mut p, &ipv6_with(ME6, PEER6, TCP, &[(44, 8)], &tcp_segment(44001, 80, 1, 0, ACK, &ts_option(501, 1), 0)));
    assert_eq!(p.latency_stats().unwrap().recorded, before);
    // The packets were counted all the same.
    let c = p.peer_counters(&PEER).unwrap().unwrap();
    assert_eq!((c.dir[wg_common::DIR_TX].packets, c.dir[wg_common::DIR_RX].packets), (2, 1));
}

#[test]
fn unanswered_questions_expire() {
    let mut p = probe();
    for seq in 0..10u16 {
        out(&mut p, &ipv4_with(ME4, PEER4, ICMP, &echo(8, 1, seq, 8)));
    }
    assert_eq!(p.expire_pending(Duration::from_secs(60)).unwrap(), 10);
    sleep(Duration::from_millis(20));
    assert_eq!(p.expire_pending(Duration::from_millis(10)).unwrap(), 0);
    assert_eq!(p.latency_stats().unwrap().expired, 10);
    // An answer after that finds nothing to match.
    back(&mut p, &ipv4_with(PEER4, ME4, ICMP, &echo(0, 1, 3, 8)));
    assert_eq!(samples(&p, Kind::Icmp).0, 0);
}

#[test]
fn a_question_takes_the_place_of_an_older_one_with_the_same_hash() {
    let mut p = DeviceProbe::load(ProbeOptions { max_peers: 16, max_pending: 4, ..Default::default() }, None).unwrap();
    let mut peer = Peer::new(PEER);
    peer.allowed_ips = vec!["10.1.0.0/16".parse::<IpNet>().unwrap()];
    p.sync(&[peer]).unwrap();
    // The place each echo request waits at, computed as the programs do.
    let place = |seq: u16| {
        let mapped = |a: Ipv4Addr| a.to_ipv6_mapped().octets();
        let k = PendingKey {
            local: mapped(ME4),
            remote: mapped(PEER4),
            kind: Kind::Icmp as u16,
            value: 1 << 16 | seq as u32,
            ..Default::default()
        };
        k.place() & 3
    };
    let mut last_at = std::collections::BTreeMap::new();
    for seq in 0..10u16 {
        out(&mut p, &ipv4_with(ME4, PEER4, ICMP, &echo(8, 1, seq, 8)));
        last_at.insert(place(seq), seq);
    }
    let places = last_at.len() as u64;
    assert!(places > 1, "10 keys over 4 places: {last_at:?}");
    let s = p.latency_stats().unwrap();
    assert_eq!((s.recorded, s.displaced, s.capacity), (10, 10 - places, 4));
    // Every reply comes back: only the last question at each place is still there to match.
    for seq in 0..10u16 {
        back(&mut p, &ipv4_with(PEER4, ME4, ICMP, &echo(0, 1, seq, 8)));
    }
    assert_eq!(samples(&p, Kind::Icmp).0, places);
    assert_eq!(p.expire_pending(Duration::from_millis(0)).unwrap(), 0);
    assert_eq!(p.latency_stats().unwrap().expired, 0);
}

#[test]
fn sampling_records_one_in_n() {
    let mut p =
        DeviceProbe::load(ProbeOptions { max_peers: 16, latency_sample: 4, ..Default::default() }, None).unwrap();
    let mut peer = Peer::new(PEER);
    peer.allowed_ips = vec!["10.1.0.0/16".parse::<IpNet>().unwrap()];
    p.sync(&[peer]).unwrap();
    for seq in 0..16u16 {
        out(&mut p, &ipv4_with(ME4, PEER4, ICMP, &echo(8, 4, seq, 8)));
    }
    assert_eq!(p.latency_stats().unwrap().recorded, 4);
    // Every reply comes back; the four asked are answered (the others skip the table).
    for seq in 0..16u16 {
        back(&mut p, &ipv4_with(PEER4, ME4, ICMP, &echo(0, 4, seq, 8)));
    }
    assert_eq!((p.latency_stats().unwrap().matched, samples(&p, Kind::Icmp).0), (4, 4));
    // TCP: a TSval in four is asked, and its echo answered.
    for val in 1..=16u32 {
        let seg = tcp_segment(40000, 443, 1000, 2000, ACK | PSH, &ts_option(val, 9), 100);
        out(&mut p, &ipv4_with(ME4, PEER4, TCP, &seg));
        let ack = tcp_segment(443, 40000, 2000, 1100, ACK, &ts_option(50, val), 0);
        back(&mut p, &ipv4_with(PEER4, ME4, TCP, &ack));
    }
    assert_eq!(samples(&p, Kind::TcpTs).0, 4);
}
