//! Per wire packet under real traffic: what all our programs together cost a packet that
//! crosses a real WireGuard tunnel, from the kernel's own accounting (bpf stats), net of what
//! the accounting and the hooks cost by themselves (an empty program attached to the same
//! four hooks under the same traffic), beside BPF_PROG_TEST_RUN's figure for the same path.
//!
//! The lab's wireguard-go device a has that many peers (b and idle others, one `wg addconf`)
//! and b holds that many /32 allowed IPs; the sendmmsg blaster of the kernel-speed bench sends
//! 64-byte UDP datagrams round-robin to them at a rate wireguard-go keeps up with, so every
//! datagram becomes one data message on the wire and the host lookups spread over all the
//! /32s. One real session carries them (10,000 sessions cannot be made here): the peer's own
//! state (counters, FIFO) stays warm, which the kernel-speed bench, a peer per packet, does not.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use wg_common::names;
use wg_tests::{
    packets::{eth_udp4, ipv4, wg, UDP},
    Collector, Implementation, Lab, Metrics,
};

use crate::{
    forward::{blast, Attached, Variant},
    median, ns_per_run, peer_addr, peer_endpoint, placed_peer, probe, HERE,
};

/// The blaster's rates: one wireguard-go forwards without dropping (it did ~45k 64-byte
/// packets/s in the throughput bench with iperf3), and as fast as it can send (wireguard-go
/// then drops some: program time per packet delivered counts those too).
const RATES: [Option<f64>; 2] = [Some(20_000.0), None];
const PAYLOAD: usize = 64;
const HOOKS: [&str; 4] = [names::PROG_EGRESS, names::PROG_INGRESS, names::PROG_UNDER_EGRESS, names::PROG_UNDER_INGRESS];

/// One measurement: program time (all hooks), runs at the plaintext and the underlay egress,
/// and packets on the wire.
#[derive(Clone, Copy, Default)]
struct Wire {
    ns: f64,
    /// Program runs, all hooks.
    runs: f64,
    plain_runs: f64,
    under_runs: f64,
    packets: f64,
    /// ns per run at the plaintext and the underlay egress (a wire packet's two hooks on the
    /// sending side; a bare program: per run of any hook).
    per_run: [f64; 2],
    /// Encap delay samples the collector took (the device's histogram).
    encap_samples: f64,
}

/// Data messages that crossed the wire, both ways: the plaintext packets each side's
/// WireGuard delivered (received on its interface).
fn delivered(lab: &Lab) -> Result<f64> {
    let mut n = 0.0;
    for side in ['a', 'b'] {
        let iface = &lab.side(side).iface;
        let out = lab.exec(side, "ip", &["-j", "-s", "link", "show", "dev", iface])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j -s link")?;
        n += v[0]["stats64"]["rx"]["packets"].as_f64().context("stats64 rx packets")?;
    }
    Ok(n)
}

fn blast_through(lab: &Lab, peers: u32, secs: f64, rate: Option<f64>) -> Result<f64> {
    let before = delivered(lab)?;
    blast(&lab.a.ns, lab.a.tunnel_v4, peers, secs, rate)?;
    // What WireGuard still holds.
    std::thread::sleep(std::time::Duration::from_millis(100));
    Ok(delivered(lab)? - before)
}

/// The collector's account of its programs' time (seconds) and runs, per program.
pub(crate) const RUN_TIME: &str = "wireguard_collector_bpf_run_time_seconds_total";
pub(crate) const RUNS: &str = "wireguard_collector_bpf_runs_total";
/// Encap delay samples of the device: with the packets sent, whether the delay FIFOs kept
/// their pairing through the blaster's bursts (every packet at the defaults, one in 64 at
/// `--latency.sample 64`).
const ENCAP_SAMPLES: &str = "wireguard_device_encap_delay_seconds_count";

/// `family` ([`RUN_TIME`] or [`RUNS`]) of device `dev`'s programs on all four hooks together,
/// as a collector's page `m` gives it.
pub(crate) fn all_hooks(m: &Metrics, dev: &str, family: &str) -> f64 {
    HOOKS.iter().map(|p| m.get_or_zero(family, &[("device", dev), ("program", p)])).sum()
}

/// The collector (`v`: counting or everything) with bpf stats on, over one blast.
fn with_collector(lab: &Lab, peers: u32, v: Variant, secs: f64, rate: Option<f64>) -> Result<Wire> {
    let mut args = vec!["--poll-interval", "1", "--bpf.stats"];
    match v {
        Variant::Counting | Variant::CountingBefore => args.push("--latency.no-delay"),
        Variant::Sampled => args.extend(["--latency.sample", "64"]),
        Variant::PlaintextOnly => args.extend(["--underlay", "none"]),
        _ => {}
    }
    let c = if v == Variant::CountingBefore {
        // The other build, for this start only (the bench is one thread).
        let ours = std::env::var_os("WG_COLLECTOR_BIN");
        std::env::set_var("WG_COLLECTOR_BIN", before_binary().context("WG_BENCH_COLLECTOR_BEFORE")?);
        let c = Collector::start(&lab.a.ns, &args);
        if let Some(b) = ours {
            std::env::set_var("WG_COLLECTOR_BIN", b);
        }
        c?
    } else {
        Collector::start(&lab.a.ns, &args)?
    };
    let read =
        |m: &Metrics, prog: &str, f: &str| m.get_or_zero(f, &[("device", lab.a.iface.as_str()), ("program", prog)]);
    let before = c.scrape()?;
    let packets = blast_through(lab, peers, secs, rate)?;
    let after = c.scrape()?;
    let delta = |prog: &str, f: &str| read(&after, prog, f) - read(&before, prog, f);
    let dev = lab.a.iface.as_str();
    let ns = (all_hooks(&after, dev, RUN_TIME) - all_hooks(&before, dev, RUN_TIME)) * 1e9;
    let runs = all_hooks(&after, dev, RUNS) - all_hooks(&before, dev, RUNS);
    let per_run = |prog: &str| delta(prog, RUN_TIME) * 1e9 / delta(prog, RUNS);
    let samples = |m: &Metrics| m.get_or_zero(ENCAP_SAMPLES, &[("device", dev)]);
    Ok(Wire {
        ns,
        runs,
        plain_runs: delta(names::PROG_EGRESS, RUNS),
        under_runs: delta(names::PROG_UNDER_EGRESS, RUNS),
        packets,
        per_run: [per_run(names::PROG_EGRESS), per_run(names::PROG_UNDER_EGRESS)],
        encap_samples: samples(&after) - samples(&before),
    })
}

/// `v`'s bare program (the empty one, or the floor) on side a's four hooks, where the
/// collector attaches its own: one program, so its accounting is theirs together.
pub(crate) fn attach_bare(lab: &Lab, v: Variant) -> Result<Attached> {
    let (wg, under) = (lab.a.iface.as_str(), "under");
    let hooks = [
        (wg, TcAttachType::Egress),
        (wg, TcAttachType::Ingress),
        (under, TcAttachType::Egress),
        (under, TcAttachType::Ingress),
    ];
    Attached::at(&lab.a.ns, 1, v, &hooks)
}

/// The empty program (or the floor's) at the four hooks over one blast (bpf stats already
/// on).
fn with_bare(lab: &Lab, peers: u32, v: Variant, secs: f64, rate: Option<f64>) -> Result<Wire> {
    let attached = attach_bare(lab, v)?;
    let packets = blast_through(lab, peers, secs, rate)?;
    let s = attached.finish()?;
    let per_run = s.ns as f64 / s.runs as f64;
    Ok(Wire {
        ns: s.ns as f64,
        runs: s.runs as f64,
        plain_runs: f64::NAN,
        under_runs: f64::NAN,
        packets,
        per_run: [per_run; 2],
        encap_samples: 0.0,
    })
}

/// BPF_PROG_TEST_RUN's figure for the same path (plaintext egress + the data message at the
/// underlay's egress), net of the empty program, with `peers` in the maps: warm (a million
/// runs of one packet, as the eBPF cost table) and cold (single runs, each after 4 MiB were
/// written: the L2 caches hold neither the programs nor their maps, as between two packets
/// of real traffic when WireGuard and the stack ran in between).
fn test_run(peers: u32, delay: bool, quick: bool) -> Result<(f64, f64)> {
    let mut p = probe(peers, delay)?;
    let me = Ipv4Addr::new(10, 0, 0, 1);
    let them = placed_peer(peers);
    let plain = ipv4(me, peer_addr(them), UDP, 20 + 8 + PAYLOAD);
    let message = eth_udp4(HERE, peer_endpoint(them), &wg::data(1, 0, (20 + 8 + PAYLOAD).next_multiple_of(16)));
    let path = |p: &mut _, repeat, before: &mut dyn FnMut()| -> Result<f64> {
        before();
        let empty = ns_per_run(p, "bench_noop", &plain, repeat)?;
        before();
        let a = ns_per_run(p, names::PROG_EGRESS, &plain, repeat)?;
        before();
        let b = ns_per_run(p, names::PROG_UNDER_EGRESS, &message, repeat)?;
        Ok(a + b - 2.0 * empty)
    };
    let warm =
        (0..5).map(|_| path(&mut p, if quick { 10_000 } else { 1_000_000 }, &mut || ())).collect::<Result<_>>()?;
    let mut scratch = vec![0u8; 4 << 20];
    let mut evict = || {
        for line in scratch.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&scratch);
    };
    let cold = (0..if quick { 50 } else { 1000 }).map(|_| path(&mut p, 1, &mut evict)).collect::<Result<_>>()?;
    Ok((median(warm), median(cold)))
}

/// A second collector build to count with, beside this one (work on the programs: two builds
/// side by side in one run, `--wire-only --peers 10000`).
fn before_binary() -> Option<std::path::PathBuf> {
    std::env::var_os("WG_BENCH_COLLECTOR_BEFORE").map(Into::into)
}

/// `peers`: the destination counts to measure (all three when empty); `reps`: medians of
/// that many runs.
pub fn run(quick: bool, peers: &[u32], reps: Option<usize>) -> Result<()> {
    let (counts, reps_default, secs): (&[u32], usize, f64) =
        if quick { (&[100], 1, 1.0) } else { (&[1, 1000, 10_000], 3, 3.0) };
    let counts = if peers.is_empty() { counts } else { peers };
    let reps = reps.unwrap_or(reps_default);
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    println!("| destinations (/32s of b; peers on the device) | blaster | variant | wire packets per run (median) | plaintext packets per underlay egress run | ns per wire packet, all four hooks (bpf stats) | net of the empty program | ns per run: plaintext / underlay egress (bare programs: any hook) | test run, same path (net) | test run, caches cold | encap delay samples per 1,000 wire packets |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in counts {
        let dests: Vec<Ipv4Addr> = (0..n).map(peer_addr).collect();
        let lab = Lab::new(Implementation::WireguardGo)?;
        lab.add_peers(n as usize, &dests)?;
        lab.exec('a', "ip", &["route", "add", "10.64.0.0/16", "dev", &lab.a.iface])?;
        lab.wait_tunnel()?;
        // The test-run figures depend on the peers only.
        let (counting, everything) = (test_run(n, false, quick)?, test_run(n, true, quick)?);
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf stats")?;
        for rate in RATES {
            let mut variants = vec![
                Variant::Empty,
                Variant::Floor,
                Variant::Reading,
                Variant::Counting,
                Variant::PlaintextOnly,
                Variant::Everything,
                Variant::Sampled,
            ];
            if before_binary().is_some() {
                variants.push(Variant::CountingBefore);
            }
            let mut runs: Vec<Vec<Wire>> = vec![Vec::new(); variants.len()];
            for _ in 0..reps {
                for (i, &v) in variants.iter().enumerate() {
                    runs[i].push(match v {
                        Variant::Empty | Variant::Floor | Variant::Reading => with_bare(&lab, n, v, secs, rate)?,
                        _ => with_collector(&lab, n, v, secs, rate)?,
                    });
                }
            }
            let per_packet = |w: &[Wire]| median(w.iter().map(|w| w.ns / w.packets).collect());
            let empty = per_packet(&runs[0]);
            let empty_per_run = median(runs[0].iter().map(|w| w.ns / w.runs).collect());
            let blaster = rate.map_or("as fast as it can".to_string(), |r| format!("{:.0}k/s", r / 1e3));
            for (i, &v) in variants.iter().enumerate() {
                let w = &runs[i];
                let packets = median(w.iter().map(|w| w.packets).collect());
                let batch = median(w.iter().map(|w| w.plain_runs / w.under_runs).collect());
                let ns = per_packet(w);
                let (net, warm, cold) = match v {
                    Variant::Empty => Default::default(),
                    // Random samples: one packet repeated in a test run says nothing of them.
                    Variant::Sampled | Variant::Floor | Variant::Reading | Variant::CountingBefore => {
                        (format!("{:.0}", ns - empty), String::new(), String::new())
                    }
                    // Fewer runs than the empty program's four hooks: its cost per run, times
                    // this variant's runs per wire packet.
                    Variant::PlaintextOnly => {
                        let runs = median(w.iter().map(|w| w.runs / w.packets).collect());
                        (format!("{:.0}", ns - empty_per_run * runs), String::new(), String::new())
                    }
                    _ => {
                        let (warm, cold) = if v == Variant::Everything { everything } else { counting };
                        (format!("{:.0}", ns - empty), format!("{warm:.0}"), format!("{cold:.0}"))
                    }
                };
                let batch = if batch.is_finite() { format!("{batch:.2}") } else { "".into() };
                let hook = |h: usize| median(w.iter().map(|w| w.per_run[h]).collect());
                let per_run = if matches!(v, Variant::Empty | Variant::Floor | Variant::Reading) {
                    format!("{:.0}", hook(0))
                } else if v == Variant::PlaintextOnly {
                    format!("{:.0} / none", hook(0))
                } else {
                    format!("{:.0} / {:.0}", hook(0), hook(1))
                };
                let samples = match v {
                    Variant::Everything | Variant::Sampled => {
                        format!("{:.1}", median(w.iter().map(|w| w.encap_samples * 1e3 / w.packets).collect()))
                    }
                    _ => String::new(),
                };
                println!(
                    "| {n} | {blaster} | {} | {packets:.0} | {batch} | {ns:.0} | {net} | {per_run} | {warm} | {cold} | {samples} |",
                    v.label()
                );
            }
        }
    }
    Ok(())
}
