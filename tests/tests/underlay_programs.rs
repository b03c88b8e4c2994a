//! The underlay programs through BPF_PROG_TEST_RUN: WireGuard datagrams in Ethernet frames,
//! handshake round trips by index, attributed by endpoint. Needs root.

use std::{net::SocketAddrV4, thread::sleep, time::Duration};

use aya::programs::{TestRun, TestRunOptions};
use wg_collector::{
    bpf::{DeviceProbe, ProbeOptions},
    wireguard::{Key, Peer},
};
use wg_common::{latency::Kind, names};
use wg_tests::packets::{eth_udp4, eth_udp6, wg};

const PEER: Key = Key([9; 32]);

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn probe() -> DeviceProbe {
    let mut p = DeviceProbe::load(ProbeOptions { max_peers: 16, ..Default::default() }, None)
        .expect("load programs (root needed)");
    let mut peer = Peer::new(PEER);
    peer.endpoint = Some("192.0.2.7:51821".parse().unwrap());
    p.sync(&[peer]).unwrap();
    p.set_listen_port(51820).unwrap();
    p
}

fn send(p: &mut DeviceProbe, prog: &str, frame: &[u8]) {
    let mut out = vec![0u8; frame.len() + 64];
    let r = p
        .program(prog)
        .unwrap()
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
        .unwrap();
    assert_eq!(r.return_value, wg_common::TC_NEXT as u32);
    assert_eq!(&out[..r.data_size_out as usize], frame, "underlay programs must not alter packets");
}

fn out(p: &mut DeviceProbe, payload: &[u8]) {
    send(p, names::PROG_UNDER_EGRESS, &eth_udp4(addr("192.0.2.1:51820"), addr("192.0.2.7:51821"), payload));
}

fn back(p: &mut DeviceProbe, payload: &[u8]) {
    send(p, names::PROG_UNDER_INGRESS, &eth_udp4(addr("192.0.2.7:51821"), addr("192.0.2.1:51820"), payload));
}

/// Samples of `kind`: (for the peer, for nobody known).
fn samples(p: &DeviceProbe, kind: Kind) -> (u64, u64) {
    let mut n = (0, 0);
    for (peer, k, v) in p.histograms().unwrap() {
        if k.kind == kind as u16 {
            if peer == Some(PEER) {
                n.0 += v.count
            } else {
                n.1 += v.count
            }
        }
    }
    n
}

#[test]
fn initiator_round_trip_by_sender_index() {
    let mut p = probe();
    let asked = std::time::Instant::now();
    out(&mut p, &wg::initiation(0xaabbccdd));
    sleep(Duration::from_millis(3));
    // A response to another index answers nothing; the right one does, once.
    back(&mut p, &wg::response(5, 0x11111111));
    back(&mut p, &wg::response(5, 0xaabbccdd));
    back(&mut p, &wg::response(6, 0xaabbccdd));
    let most = asked.elapsed().as_nanos() as u64;
    assert_eq!(samples(&p, Kind::HandshakeInitiator), (1, 0));
    let (_, k, v) =
        p.histograms().unwrap().into_iter().find(|(_, k, _)| k.kind == Kind::HandshakeInitiator as u16).unwrap();
    // Between the 3 ms slept and the whole exchange as timed here.
    assert!(v.sum_ns >= 3_000_000 && v.sum_ns <= most, "{k:?} {v:?}, at most {most} ns");
}

#[test]
fn responder_round_trip_closes_on_first_data() {
    let mut p = probe();
    // They initiate (not a question of ours), we respond with sender index 77.
    back(&mut p, &wg::initiation(5));
    out(&mut p, &wg::response(77, 5));
    back(&mut p, &wg::data(76, 0, 64));
    back(&mut p, &wg::data(77, 0, 0)); // a keepalive confirms the session too
    back(&mut p, &wg::data(77, 1, 64));
    assert_eq!(samples(&p, Kind::HandshakeResponder), (1, 0));
}

#[test]
fn endpoints_are_found_at_their_place_or_in_the_hash_and_nothing_stale_stays() {
    // 16 places for 12 endpoints: some share a place and are found through the hash.
    let mut p = DeviceProbe::load(ProbeOptions { max_peers: 16, ..Default::default() }, None).unwrap();
    p.set_listen_port(51820).unwrap();
    let keys: Vec<Key> = (0..12u8).map(|i| Key([100 + i; 32])).collect();
    let endpoint = |i: usize| addr(&format!("192.0.2.{}:{}", 10 + i, 40000 + i));
    // Peer i at endpoint i + shift.
    let peers = |shift: usize| {
        let at = |(i, k): (usize, &Key)| {
            let mut peer = Peer::new(*k);
            peer.endpoint = Some(endpoint((i + shift) % 12).into());
            peer
        };
        keys.iter().enumerate().map(at).collect::<Vec<_>>()
    };
    // An initiation and a data message to every endpoint (data messages of peers are counted
    // with the peer's counters, the rest in a hash); then the messages each peer and the
    // device has.
    let round = |p: &mut DeviceProbe| {
        for i in 0..12 {
            send(
                p,
                names::PROG_UNDER_EGRESS,
                &eth_udp4(addr("192.0.2.1:51820"), endpoint(i), &wg::initiation(i as u32 + 1)),
            );
            send(
                p,
                names::PROG_UNDER_EGRESS,
                &eth_udp4(addr("192.0.2.1:51820"), endpoint(i), &wg::data(7, i as u64, 64)),
            );
        }
        // A reading, as the collector takes one: data messages folded into the peers' counts.
        let r = p.read(std::time::Duration::from_secs(3600)).unwrap();
        let total = |m: &wg_common::protocol::MessageCounts| m.counts.iter().flatten().sum::<u64>();
        (keys.iter().map(|k| r.messages.get(k).map_or(0, total)).collect::<Vec<_>>(), total(&r.device_messages))
    };
    p.sync(&peers(0)).unwrap();
    let placed = p.placed_endpoints();
    assert!((1..12).contains(&placed), "{placed} of 12 endpoints placed: both ways must be tested");
    assert_eq!(round(&mut p), (vec![2; 12], 0));
    // Every endpoint moves to another peer: each datagram goes to the endpoint's new peer.
    p.sync(&peers(5)).unwrap();
    assert_eq!(round(&mut p), (vec![4; 12], 0));
    // Half the peers go: datagrams to their endpoints count for the device only.
    p.sync(&peers(5)[..6]).unwrap();
    let mut expected = vec![6; 6];
    expected.extend([0; 6]);
    assert_eq!(round(&mut p), (expected, 12));
}

#[test]
fn unknown_endpoints_count_for_the_device_and_other_ports_are_ignored() {
    let mut p = probe();
    // A response from an endpoint not synced (a roamed peer) naming the index we gave the
    // peer is still the peer's.
    out(&mut p, &wg::initiation(1));
    send(
        &mut p,
        names::PROG_UNDER_INGRESS,
        &eth_udp4(addr("198.51.100.9:4000"), addr("192.0.2.1:51820"), &wg::response(2, 1)),
    );
    assert_eq!(samples(&p, Kind::HandshakeInitiator), (1, 0));
    // An initiation to an endpoint not synced: its answer counts for the device.
    send(
        &mut p,
        names::PROG_UNDER_EGRESS,
        &eth_udp4(addr("192.0.2.1:51820"), addr("198.51.100.10:4000"), &wg::initiation(5)),
    );
    send(
        &mut p,
        names::PROG_UNDER_INGRESS,
        &eth_udp4(addr("198.51.100.10:4000"), addr("192.0.2.1:51820"), &wg::response(6, 5)),
    );
    assert_eq!(samples(&p, Kind::HandshakeInitiator), (1, 1));
    assert_eq!(p.invalid().unwrap(), [0, 0, 0, 0]);
    // Another port's traffic is not ours, even when it looks like WireGuard.
    let before = p.latency_stats().unwrap().recorded;
    send(
        &mut p,
        names::PROG_UNDER_EGRESS,
        &eth_udp4(addr("192.0.2.1:51999"), addr("192.0.2.7:51821"), &wg::initiation(3)),
    );
    assert_eq!(p.latency_stats().unwrap().recorded, before);
    // Truncated and odd frames pass untouched.
    out(&mut p, &[1, 0, 0]);
    send(&mut p, names::PROG_UNDER_EGRESS, &[0u8; 20]);
}

#[test]
fn vlan_tags_and_ip_options_take_the_slow_path_to_the_same_answer() {
    let mut p = probe();
    out(&mut p, &wg::initiation(0x1234));
    // The response in a VLAN-tagged frame whose IPv4 header carries 4 bytes of options.
    let plain = eth_udp4(addr("192.0.2.7:51821"), addr("192.0.2.1:51820"), &wg::response(9, 0x1234));
    let mut ip = plain[14..].to_vec();
    ip[0] = 0x46; // IHL 6
    ip.splice(20..20, [1u8, 1, 1, 0]); // NOP NOP NOP EOL
    let total = ip.len() as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut frame = plain[..12].to_vec();
    frame.extend([0x81, 0x00, 0x00, 0x07, 0x08, 0x00]); // 802.1Q, VLAN 7, then IPv4
    frame.extend(ip);
    send(&mut p, names::PROG_UNDER_INGRESS, &frame);
    assert_eq!(samples(&p, Kind::HandshakeInitiator), (1, 0));
}

#[test]
fn ipv6_endpoints_are_read_alike_on_the_fast_and_the_slow_path() {
    let (ours, theirs) = ("[2001:db8::1]:51820".parse().unwrap(), "[2001:db8::7]:51821".parse().unwrap());
    let mut p = DeviceProbe::load(ProbeOptions { max_peers: 16, ..Default::default() }, None).unwrap();
    let mut peer = Peer::new(PEER);
    peer.endpoint = Some(std::net::SocketAddr::V6(theirs));
    p.sync(&[peer]).unwrap();
    p.set_listen_port(51820).unwrap();
    // The same frame behind an 802.1Q tag: read through the helper.
    let tagged = |f: Vec<u8>| [&f[..12], &[0x81, 0x00, 0x00, 0x07], &f[12..]].concat();
    for frame in [|f: Vec<u8>| f, tagged] {
        // We initiate (sender index 0x0a0b0c0d); the peer's response names it.
        let before = samples(&p, Kind::HandshakeInitiator).0;
        send(&mut p, names::PROG_UNDER_EGRESS, &frame(eth_udp6(ours, theirs, &wg::initiation(0x0a0b0c0d))));
        send(&mut p, names::PROG_UNDER_INGRESS, &frame(eth_udp6(theirs, ours, &wg::response(5, 0x0a0b0c0d))));
        assert_eq!(samples(&p, Kind::HandshakeInitiator), (before + 1, 0));
        // Another port of the same host is not ours.
        let other = "[2001:db8::1]:51999".parse().unwrap();
        send(&mut p, names::PROG_UNDER_EGRESS, &frame(eth_udp6(other, theirs, &wg::data(7, 1, 64))));
    }
    // A data message through each path: with the handshakes, all the peer's, none the device's.
    send(&mut p, names::PROG_UNDER_EGRESS, &eth_udp6(ours, theirs, &wg::data(7, 1, 64)));
    send(&mut p, names::PROG_UNDER_EGRESS, &tagged(eth_udp6(ours, theirs, &wg::data(7, 2, 64))));
    let r = p.read(std::time::Duration::from_secs(3600)).unwrap();
    let m = r.messages.get(&PEER).expect("the peer's messages");
    use wg_common::{protocol::MessageType as T, DIR_RX, DIR_TX};
    assert_eq!(m.counts[DIR_TX][T::HandshakeInitiation as usize], 2);
    assert_eq!(m.counts[DIR_RX][T::HandshakeResponse as usize], 2);
    assert_eq!(m.counts[DIR_TX][T::Data as usize], 2);
    assert_eq!(r.device_messages.counts.iter().flatten().sum::<u64>(), 0);
}
