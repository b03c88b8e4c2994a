//! `cargo xtask bench` runs this: the cost of each eBPF hook per packet, measured with
//! BPF_PROG_TEST_RUN on crafted packets, net of an empty program measured the same way, with
//! 1, 1,000 and 10,000 peers in the maps. Variants alternate within each repetition so noise
//! hits them alike; the median of the repetitions is reported. Prints a Markdown table.

mod formats;
mod forward;
mod load;
mod scale;
mod settings;
mod soak;
mod throughput;
mod wire;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use wg_collector::{
    bpf::{DeviceProbe, ProbeOptions},
    wireguard::{Key, Peer},
};
use wg_common::{latency::Endpoint, names};
use wg_tests::packets::{eth_udp4, ipv4, ipv4_with, tcp_segment, ts_option, wg, ACK, TCP, UDP};

struct Case {
    hook: &'static str,
    what: &'static str,
    program: &'static str,
    packet: Vec<u8>,
    delay: bool,
}

fn peer_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn probe(peers: u32, delay: bool) -> Result<DeviceProbe> {
    let mut p = DeviceProbe::load(ProbeOptions { delay, ..Default::default() }, None)?;
    let list: Vec<Peer> = (0..peers)
        .map(|i| {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            let mut peer = Peer::new(Key(k));
            peer.allowed_ips = vec![IpNet::new(peer_addr(i).into(), 32).unwrap()];
            peer.endpoint = Some(peer_endpoint(i).into());
            peer
        })
        .collect();
    // One more, outside the /16 the others are numbered from: found by the host hash, not
    // the host block.
    let mut list = list;
    let mut outside = Peer::new(Key([0xff; 32]));
    outside.allowed_ips = vec![IpNet::new(OUTSIDE.into(), 32).unwrap()];
    list.push(outside);
    p.sync(&list)?;
    p.set_listen_port(51820)?;
    p.program("bench_noop")?.load()?;
    p.program("bench_floor")?.load()?;
    p.program("bench_read")?.load()?;
    p.program("check_bucket_of")?.load()?;
    Ok(p)
}

fn peer_endpoint(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 20000 + (i % 40000) as u16)
}

/// Whether peer `i`'s endpoint has its place in the endpoint table (the default size) among
/// `peers`, or shares it with one that took it and is found through the hash (see
/// wg_common::latency::EndpointPlace).
fn endpoint_placed(peers: u32, i: u32) -> bool {
    let key = |i: u32| {
        let e = peer_endpoint(i);
        Endpoint { addr: e.ip().to_ipv6_mapped().octets(), port: e.port(), _pad: 0 }
    };
    let mask = wg_common::DEFAULT_MAX_PEERS.next_power_of_two() - 1;
    let ours = key(i);
    (0..peers).map(key).filter(|e| e.place() & mask == ours.place() & mask).all(|e| ours.words() <= e.words())
}

/// This device's underlay address in the crafted data messages.
const HERE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 254), 51820);

/// A peer in the second half of `peers` whose endpoint has its place (most do).
fn placed_peer(peers: u32) -> u32 {
    (peers / 2..peers).find(|&i| endpoint_placed(peers, i)).unwrap_or(0)
}

/// The peer outside the host block (see `probe`).
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);

fn cases(peers: u32) -> Vec<Case> {
    let me = Ipv4Addr::new(10, 0, 0, 1);
    let them = peer_addr(peers / 2);
    let here = HERE;
    // A peer whose endpoint has its place (most do), and one whose endpoint lost it to
    // another (at 1k and 10k peers some do): found through the hash.
    let there = peer_endpoint(placed_peer(peers));
    let hashed = (0..peers).find(|&i| !endpoint_placed(peers, i)).map(peer_endpoint);
    let ts_seg = tcp_segment(40000, 443, 1, 1, ACK, &ts_option(1000, 2000), 1000);
    let mut cases = vec![
        Case {
            hook: "wg egress",
            what: "UDP: attribute + count",
            program: names::PROG_EGRESS,
            packet: ipv4(me, them, UDP, 1100),
            delay: false,
        },
        Case {
            hook: "wg egress",
            what: "UDP: attribute (host hash, outside the block) + count",
            program: names::PROG_EGRESS,
            packet: ipv4(me, OUTSIDE, UDP, 1100),
            delay: false,
        },
        Case {
            hook: "wg egress",
            what: "UDP: + encap FIFO",
            program: names::PROG_EGRESS,
            packet: ipv4(me, them, UDP, 1100),
            delay: true,
        },
        Case {
            hook: "wg egress",
            what: "TCP with timestamps: + RTT question",
            program: names::PROG_EGRESS,
            packet: ipv4_with(me, them, TCP, &ts_seg),
            delay: true,
        },
        Case {
            hook: "wg egress",
            what: "TCP with timestamps: RTT question, no FIFO (--latency.no-delay)",
            program: names::PROG_EGRESS,
            packet: ipv4_with(me, them, TCP, &ts_seg),
            delay: false,
        },
        Case {
            hook: "wg ingress",
            what: "TCP with timestamps: + RTT answer, decap FIFO",
            program: names::PROG_INGRESS,
            packet: ipv4_with(them, me, TCP, &ts_seg),
            delay: true,
        },
        Case {
            hook: "wg egress",
            what: "no peer (unattributed)",
            program: names::PROG_EGRESS,
            packet: ipv4(me, Ipv4Addr::new(192, 168, 9, 9), UDP, 1100),
            delay: true,
        },
        Case {
            hook: "underlay egress",
            what: "data message: parse + encap FIFO",
            program: names::PROG_UNDER_EGRESS,
            packet: eth_udp4(here, there, &wg::data(1, 0, 1100)),
            delay: true,
        },
        Case {
            hook: "underlay ingress",
            what: "data message: parse + responder check + decap FIFO + path window (a repeat: the duplicate branch)",
            program: names::PROG_UNDER_INGRESS,
            packet: eth_udp4(there, here, &wg::data(1, 0, 1100)),
            delay: true,
        },
        Case {
            hook: "underlay egress",
            what: "other UDP (not our port)",
            program: names::PROG_UNDER_EGRESS,
            packet: eth_udp4("192.0.2.254:53".parse().unwrap(), there, &[0u8; 100]),
            delay: true,
        },
    ];
    if peers == 1 {
        // What a sample adds for its bucket: the native bucket of 17.3 ms (any value costs
        // the same: no loop, five compares).
        let mut value = 17_300_000u64.to_le_bytes().to_vec();
        value.resize(64, 0);
        cases.push(Case {
            hook: "any",
            what: "latency sample: its native bucket (`bucket_of`, the program `check_bucket_of`)",
            program: "check_bucket_of",
            packet: value,
            delay: true,
        });
    }
    if let Some(hashed) = hashed {
        let what = "data message: parse (endpoint not at its place: the hash) + encap FIFO";
        cases.push(Case {
            hook: "underlay egress",
            what,
            program: names::PROG_UNDER_EGRESS,
            packet: eth_udp4(here, hashed, &wg::data(1, 0, 1100)),
            delay: true,
        });
    }
    cases
}

fn ns_per_run(p: &mut DeviceProbe, program: &str, packet: &[u8], repeat: u32) -> Result<f64> {
    let r = p.program(program)?.test_run(TestRunOptions { data_in: Some(packet), repeat, ..Default::default() })?;
    Ok(r.duration.as_nanos() as f64)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(m) = args.windows(2).find(|w| w[0] == "--soak").map(|w| w[1].parse()) {
        return soak::run(m?);
    }
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--scrape-only") {
        // For work on the scrape path: the collector's scrape table alone, without the
        // exporter (compare two builds with WG_BENCH_COLLECTOR).
        println!("## Scrape at scale ({})\n", collector_binary()?.display());
        return scale::run(quick, false);
    }
    if args.iter().any(|a| a == "--forward-only") {
        println!("## Kernel speed: the programs on an L3 kernel device at one CPU's limit\n");
        return forward::run(quick);
    }
    if args.iter().any(|a| a == "--wire-only") {
        println!("## Per wire packet under real traffic\n");
        // `--peers 10000[,...]`: those destination counts only.
        let peers = match args.windows(2).find(|w| w[0] == "--peers") {
            Some(w) => {
                w[1].split(',').map(|n| n.parse().with_context(|| format!("--peers {n}"))).collect::<Result<_>>()?
            }
            None => Vec::new(),
        };
        // `--reps N`: medians of N rather than 3 (telling two builds apart).
        let reps = args.windows(2).find(|w| w[0] == "--reps").map(|w| w[1].parse()).transpose().context("--reps")?;
        return wire::run(quick, &peers, reps);
    }
    if args.iter().any(|a| a == "--settings-only") {
        println!("## Latency settings per wire packet under TCP and ICMP\n");
        return settings::run(quick);
    }
    if args.iter().any(|a| a == "--formats-only") {
        println!("## Text vs protobuf at scale, latency on every peer\n");
        return formats::run(quick);
    }
    println!("## eBPF cost per packet and hook\n");
    ebpf_costs(quick)?;
    if args.iter().any(|a| a == "--ebpf-only") {
        // For work on the programs: their table alone, in a minute.
        return Ok(());
    }
    println!("\n## Scrape at scale\n");
    scale::run(quick, true)?;
    println!("\n## Text vs protobuf at scale, latency on every peer\n");
    formats::run(quick)?;
    println!("\n## Kernel speed: the programs on an L3 kernel device at one CPU's limit\n");
    forward::run(quick)?;
    println!("\n## Per wire packet under real traffic\n");
    wire::run(quick, &[], None)?;
    println!("\n## Latency settings per wire packet under TCP and ICMP\n");
    settings::run(quick)?;
    println!("\n## Tunnel throughput with and without our programs\n");
    throughput::run(quick)?;
    println!("\n## Load: 200 concurrent scrapers\n");
    load::run(quick)?;
    Ok(())
}

/// The release collector the benchmarks run: $WG_BENCH_COLLECTOR, or this workspace's.
pub fn collector_binary() -> Result<std::path::PathBuf> {
    let path = std::env::var_os("WG_BENCH_COLLECTOR").unwrap_or_else(|| "target/release/wg-collector".into());
    Ok(std::fs::canonicalize(&path)?)
}

fn ebpf_costs(quick: bool) -> Result<()> {
    let (reps, repeat, peer_counts): (usize, u32, &[u32]) =
        if quick { (3, 20_000, &[1, 1000]) } else { (7, 1_000_000, &[1, 1000, 10_000]) };
    println!("| hook | packet: work done | peers | ns/packet (net) | ns/run raw | empty program |");
    println!("|---|---|---:|---:|---:|---:|");
    for &peers in peer_counts {
        let mut with_delay = probe(peers, true)?;
        let mut without = probe(peers, false)?;
        let cases = cases(peers);
        let mut raw: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        let mut empty = Vec::new();
        for _ in 0..reps {
            // Alternate: the baseline and every case once per repetition.
            empty.push(ns_per_run(&mut with_delay, "bench_noop", &cases[0].packet, repeat)?);
            for (i, c) in cases.iter().enumerate() {
                let p = if c.delay { &mut with_delay } else { &mut without };
                raw[i].push(ns_per_run(p, c.program, &c.packet, repeat)?);
            }
        }
        let base = median(empty);
        for (c, r) in cases.iter().zip(raw) {
            let m = median(r);
            println!("| {} | {} | {} | {:.0} | {:.0} | {:.0} |", c.hook, c.what, peers, (m - base).max(0.0), m, base);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
