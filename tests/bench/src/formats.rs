//! Text vs protobuf at 1,000 and 10,000 peers, every peer with latency samples: scrape time
//! and page size of the release collector, plain and gzipped, alternating formats.
//!
//! 10,000 peers that answer pings cannot run here, so the samples are written into the
//! device's pinned histogram map (what the kernel writes for a sample): 4 histograms per peer
//! (tcp_ts, icmp, encap, decap) of 6 populated buckets each. Everything after the map is the
//! real scrape path.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
use wg_common::{
    buckets::bucket_of,
    latency::{HistKey, HistValue, Kind},
    names,
};
use wg_tests::Collector;

use wg_tests::exporter::{scrape_with, ACCEPT_GZIP};

use crate::scale::lab_with_peers;

const PROTOBUF: &str =
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3";
const KINDS: [Kind; 4] = [Kind::TcpTs, Kind::Icmp, Kind::Encap, Kind::Decap];
const BUCKETS: u64 = 6;

/// Writes every peer's samples into the device's pinned histogram map; returns the entries.
fn fill(pins: &Path, device: &str, peers: u32) -> Result<usize> {
    let path = pins.join(device).join(names::LATENCY_HIST);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut hist: PerCpuHashMap<MapData, HistKey, HistValue> = PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let mut entries = 0;
    for slot in 0..peers {
        for kind in KINDS {
            // A few ms apart per peer, 10 % apart per bucket: buckets of schema 4 two apart.
            let base = if matches!(kind, Kind::Encap | Kind::Decap) { 20_000 } else { 2_000_000 + 1_000 * slot as u64 };
            for i in 0..BUCKETS {
                let ns = base + base * i / 10 * 2;
                let key = HistKey { slot, kind: kind as u16, bucket: bucket_of(ns) };
                let value = HistValue { count: 1 + i, sum_ns: ns * (1 + i) };
                hist.insert(key, PerCpuValues::try_from(vec![value; cpus])?, 0)?;
                entries += 1;
            }
        }
    }
    Ok(entries)
}

fn median(v: &[f64]) -> f64 {
    crate::median(v.to_vec())
}

pub fn run(quick: bool) -> Result<()> {
    let (counts, reps): (&[u32], usize) = if quick { (&[100], 3) } else { (&[1000, 10_000], 7) };
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    println!("| peers | histogram entries | text: scrape median | page | gzip | protobuf: scrape median | page | gzip | protobuf / text: time, page |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in counts {
        let lab = lab_with_peers(n as usize)?;
        let c = Collector::start(&lab.a.ns, &["--poll-interval", "1", "--latency.max-hist-entries", "524288"])?;
        c.wait_for(Duration::from_secs(60), |m| {
            m.find("wireguard_peers", &[]).next().map(|s| s.value) == Some(n as f64)
        })?;
        let entries = fill(c.pin_path().context("the collector pins")?, &lab.a.iface, n)?;
        c.wait_for(Duration::from_secs(60), |m| {
            m.find("wireguard_peer_latency_seconds_count", &[("method", "icmp")]).count() == n as usize
        })?;
        let ns = lab.a.ns.clone();
        let (mut text, mut proto) = (Vec::new(), Vec::new());
        let (mut sizes, mut warm) = ([0usize; 4], 1);
        for _ in 0..reps + warm {
            let t = scrape_with(&ns, 9586, &[])?;
            let p = scrape_with(&ns, 9586, &[("Accept", PROTOBUF)])?;
            let tg = scrape_with(&ns, 9586, ACCEPT_GZIP)?;
            let pg = scrape_with(&ns, 9586, &[("Accept", PROTOBUF), ("Accept-Encoding", "gzip")])?;
            sizes = [t.1, tg.1, p.1, pg.1];
            if warm > 0 {
                warm -= 1;
                continue;
            }
            text.push(t.0);
            proto.push(p.0);
        }
        let kib = |b: usize| b as f64 / 1024.0;
        let (t, p) = (median(&text) * 1e3, median(&proto) * 1e3);
        println!(
            "| {n} | {entries} | {t:.1} ms | {:.0} KiB | {:.0} KiB | {p:.1} ms | {:.0} KiB | {:.0} KiB | {:.2}×, {:.2}× |",
            kib(sizes[0]),
            kib(sizes[1]),
            kib(sizes[2]),
            kib(sizes[3]),
            p / t,
            sizes[2] as f64 / sizes[0] as f64,
        );
    }
    Ok(())
}
