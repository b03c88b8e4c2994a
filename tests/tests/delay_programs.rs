//! Encap/decap delay in the programs, through BPF_PROG_TEST_RUN: plaintext on the WireGuard
//! interface paired in order with data messages on the underlay. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use wg_collector::{
    bpf::{DeviceProbe, ProbeOptions},
    wireguard::{Key, Peer},
};
use wg_common::{
    latency::{Kind, FIFO_LEN},
    names,
};
use wg_tests::packets::{eth_udp4, ipv4, wg, UDP};

const PEER: Key = Key([3; 32]);
const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const THEM: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

fn probe() -> DeviceProbe {
    probe_with(ProbeOptions { max_peers: 16, ..Default::default() })
}

fn probe_with(options: ProbeOptions) -> DeviceProbe {
    let mut p = DeviceProbe::load(options, None).expect("load programs (root needed)");
    let mut peer = Peer::new(PEER);
    peer.endpoint = Some("192.0.2.7:51821".parse().unwrap());
    peer.allowed_ips = vec!["10.1.0.0/16".parse::<IpNet>().unwrap()];
    p.sync(&[peer]).unwrap();
    p.set_listen_port(51820).unwrap();
    p
}

fn run(p: &mut DeviceProbe, prog: &str, data: &[u8]) {
    let r = p.program(prog).unwrap().test_run(TestRunOptions { data_in: Some(data), ..Default::default() }).unwrap();
    assert_eq!(r.return_value, wg_common::TC_NEXT as u32);
}

/// A plaintext packet of `len` bytes to / from the peer on the WireGuard interface.
fn plain_out(p: &mut DeviceProbe, len: usize) {
    run(p, names::PROG_EGRESS, &ipv4(ME, THEM, UDP, len));
}
fn plain_in(p: &mut DeviceProbe, len: usize) {
    run(p, names::PROG_INGRESS, &ipv4(THEM, ME, UDP, len));
}

/// A data message carrying `plaintext` bytes leaving / arriving on the underlay.
fn msg_out(p: &mut DeviceProbe, plaintext: usize) {
    let me: SocketAddrV4 = "192.0.2.1:51820".parse().unwrap();
    let them: SocketAddrV4 = "192.0.2.7:51821".parse().unwrap();
    run(p, names::PROG_UNDER_EGRESS, &eth_udp4(me, them, &wg::data(1, 0, plaintext)));
}
fn msg_in(p: &mut DeviceProbe, plaintext: usize) {
    let me: SocketAddrV4 = "192.0.2.1:51820".parse().unwrap();
    let them: SocketAddrV4 = "192.0.2.7:51821".parse().unwrap();
    run(p, names::PROG_UNDER_INGRESS, &eth_udp4(them, me, &wg::data(1, 0, plaintext)));
}

fn samples(p: &DeviceProbe, kind: Kind) -> u64 {
    p.histograms()
        .unwrap()
        .iter()
        .filter(|(peer, k, _)| *peer == Some(PEER) && k.kind == kind as u16)
        .map(|(_, _, v)| v.count)
        .sum()
}

#[test]
fn encap_pairs_packets_in_order_and_skips_keepalives() {
    let mut p = probe();
    plain_out(&mut p, 84);
    plain_out(&mut p, 1000);
    msg_out(&mut p, 0); // a keepalive: takes nothing
    msg_out(&mut p, 84);
    msg_out(&mut p, 1000);
    msg_out(&mut p, 500); // nothing went in for it
    assert_eq!(samples(&p, Kind::Encap), 2);
    assert_eq!(p.latency_stats().unwrap().fifo_resync, 0);
}

#[test]
fn a_packet_dropped_inside_wireguard_does_not_shift_the_rest() {
    let mut p = probe();
    // Three packets go in; WireGuard drops the 200-byte one; the others come out.
    plain_out(&mut p, 84);
    plain_out(&mut p, 200);
    plain_out(&mut p, 1400);
    msg_out(&mut p, 84);
    msg_out(&mut p, 1400);
    assert_eq!(samples(&p, Kind::Encap), 2);
    assert_eq!(p.latency_stats().unwrap().fifo_resync, 1);
}

#[test]
fn decap_pairs_messages_with_their_plaintext() {
    let mut p = probe();
    msg_in(&mut p, 84);
    msg_in(&mut p, 0); // a keepalive leaves nothing
    msg_in(&mut p, 600);
    plain_in(&mut p, 84);
    plain_in(&mut p, 600);
    assert_eq!(samples(&p, Kind::Decap), 2);
    assert_eq!(samples(&p, Kind::Encap), 0);
}

#[test]
fn overflow_lets_the_orphaned_messages_go_without_samples() {
    let mut p = probe();
    // 6 packets more than the FIFO holds: the first 6 lose their entries.
    for _ in 0..FIFO_LEN + 6 {
        plain_out(&mut p, 100);
    }
    for _ in 0..FIFO_LEN + 6 {
        msg_out(&mut p, 100);
    }
    let s = p.latency_stats().unwrap();
    assert_eq!(s.fifo_overflow, 6);
    assert_eq!(samples(&p, Kind::Encap), FIFO_LEN as u64);
    assert_eq!(s.fifo_resync, 0);
    // Emptied, it pairs again from where it stands.
    plain_out(&mut p, 84);
    msg_out(&mut p, 84);
    assert_eq!(samples(&p, Kind::Encap), FIFO_LEN as u64 + 1);
}

#[test]
fn delay_tracking_can_be_switched_off() {
    let mut p = probe_with(ProbeOptions { max_peers: 16, delay: false, ..Default::default() });
    plain_out(&mut p, 84);
    msg_out(&mut p, 84);
    assert_eq!(samples(&p, Kind::Encap), 0);
}

/// `--latency.sample 4`: one packet in four (at random) is timed; the others keep their
/// places untimed, so the pairing holds, a dropped packet's entry is still given up by its
/// size, and no sample is taken but for a timed packet.
#[test]
fn sampling_times_one_packet_in_n_and_keeps_the_pairing() {
    let mut p = probe_with(ProbeOptions { max_peers: 16, latency_sample: 4, ..Default::default() });
    const GROUPS: u64 = 500;
    for _ in 0..GROUPS {
        // Three go in each way; WireGuard drops the 300-byte one.
        for len in [100, 300, 500] {
            plain_out(&mut p, len);
            msg_in(&mut p, len);
        }
        for len in [100, 500] {
            msg_out(&mut p, len);
            plain_in(&mut p, len);
        }
    }
    // 1,000 packets out each way, each timed with probability 1/4: 250 ± 13.7 (one standard
    // deviation); the bounds are six of them.
    for kind in [Kind::Encap, Kind::Decap] {
        let n = samples(&p, kind);
        assert!((168..=332).contains(&n), "{kind:?}: {n} samples of 1,000 packets at one in four");
    }
    let s = p.latency_stats().unwrap();
    assert_eq!((s.fifo_resync, s.fifo_overflow), (2 * GROUPS, 0), "each group's dropped packet, each way");
}

/// `--latency.sample 64` and bursts longer than the FIFO (eight packets of one size in, then
/// their eight messages out, 200 times): the passed-over packets of a burst share entries, so
/// nothing overflows and every timed packet gets its sample. With an entry per packet each
/// burst overflowed by one. (A burst with four or more of its eight packets timed would
/// still overflow: about one run in a thousand meets one.)
#[test]
fn sampling_keeps_bursts_longer_than_the_fifo_paired() {
    let mut p = probe_with(ProbeOptions { max_peers: 16, latency_sample: 64, ..Default::default() });
    const BURSTS: u64 = 200;
    const BURST: usize = FIFO_LEN + 1;
    for _ in 0..BURSTS {
        for _ in 0..BURST {
            plain_out(&mut p, 100);
        }
        for _ in 0..BURST {
            msg_out(&mut p, 100);
        }
    }
    let s = p.latency_stats().unwrap();
    assert_eq!((s.fifo_overflow, s.fifo_resync), (0, 0), "bursts of {BURST} at one in 64");
    // 1,600 packets timed with probability 1/64: 25 ± 4.96 (one standard deviation); the
    // bounds are six of them.
    let n = samples(&p, Kind::Encap);
    assert!((1..=55).contains(&n), "{n} samples of 1,600 packets at one in 64");
}
