//! What each latency setting costs a wire packet under traffic that asks round-trip
//! questions (the per-wire-packet table's blaster sends UDP, which asks none): TCP bulk
//! (iperf3) and an ICMP echo flood (`ping -f`) through the lab's wireguard-go tunnel, the
//! collector on side a with one setting at a time, bpf stats on.
//!
//! Per wire packet: the program time of all four hooks, less what the empty program costs a
//! run (attached to the same four hooks under the same traffic: the stats' own clock reads)
//! times the runs, over the data messages that crossed a's underlay both ways (the
//! collector's own count, GSO and GRO batches counted by their segments). Settings
//! alternate within each repetition; medians.

use std::process::Stdio;

use anyhow::{Context, Result};
use wg_tests::{lab::terminate, netns, Collector, Implementation, Lab, Metrics};

use crate::{
    forward::Variant,
    median,
    wire::{all_hooks, RUNS, RUN_TIME},
};

/// The settings compared, as the collector's arguments (the first is the defaults).
const SETTINGS: [&[&str]; 5] = [
    &[],
    &["--latency.sample", "8"],
    &["--latency.sample", "64"],
    &["--latency.no-delay"],
    &["--latency.no-delay", "--latency.sample", "64"],
];

#[derive(Clone, Copy)]
enum Traffic {
    TcpBulk,
    PingFlood,
}

impl Traffic {
    fn label(self) -> &'static str {
        match self {
            Self::TcpBulk => "TCP bulk (iperf3)",
            Self::PingFlood => "ICMP echo flood (ping -f)",
        }
    }

    fn run(self, lab: &Lab, secs: u32) -> Result<()> {
        let (b, secs) = (lab.b.tunnel_v4.to_string(), secs.to_string());
        match self {
            Self::TcpBulk => lab.exec('a', "iperf3", &["-c", &b, "-t", &secs]).map(drop),
            Self::PingFlood => lab.exec('a', "ping", &["-f", "-q", "-w", &secs, &b]).map(drop),
        }
    }
}

/// The empty program's nanoseconds per run at the four hooks over one run of `t`.
fn empty_per_run(lab: &Lab, t: Traffic, secs: u32) -> Result<f64> {
    let attached = crate::wire::attach_bare(lab, Variant::Empty)?;
    t.run(lab, secs)?;
    let s = attached.finish()?;
    Ok(s.ns as f64 / s.runs.max(1) as f64)
}

/// Program time (all hooks, ns), program runs and data messages on the wire (both ways) over
/// one run of `t` with the collector started with `setting`.
fn with_setting(lab: &Lab, setting: &[&str], t: Traffic, secs: u32) -> Result<(f64, f64, f64)> {
    let mut args = vec!["--poll-interval", "1", "--bpf.stats"];
    args.extend_from_slice(setting);
    let c = Collector::start(&lab.a.ns, &args)?;
    let dev = lab.a.iface.as_str();
    let read = |m: &Metrics| {
        let (ns, runs) = (all_hooks(m, dev, RUN_TIME) * 1e9, all_hooks(m, dev, RUNS));
        let data: f64 = m.find("wireguard_messages_total", &[("device", dev), ("type", "data")]).map(|s| s.value).sum();
        (ns, runs, data)
    };
    let before = read(&c.scrape()?);
    t.run(lab, secs)?;
    let after = read(&c.scrape()?);
    Ok((after.0 - before.0, after.1 - before.1, after.2 - before.2))
}

pub fn run(quick: bool) -> Result<()> {
    let (reps, secs) = if quick { (1, 1) } else { (3, 3) };
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    let lab = Lab::new(Implementation::WireguardGo)?;
    lab.wait_tunnel()?;
    let mut server = netns::cmd(&lab.b.ns, "iperf3")
        .args(["-s", "-B", &lab.b.tunnel_v4.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let table = || -> Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        println!("| traffic | setting | wire packets per run (median) | program runs per wire packet | ns per wire packet, all four hooks, net of the empty program | a core's share at 880k wire packets/s, at this cost (an upper bound: caches stay warmer at that rate) |");
        println!("|---|---|---:|---:|---:|---:|");
        for t in [Traffic::TcpBulk, Traffic::PingFlood] {
            let mut empty = Vec::new();
            let mut runs: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); SETTINGS.len()];
            for _ in 0..reps {
                empty.push(empty_per_run(&lab, t, secs)?);
                for (i, s) in SETTINGS.iter().enumerate() {
                    runs[i].push(with_setting(&lab, s, t, secs)?);
                }
            }
            let empty = median(empty);
            for (i, s) in SETTINGS.iter().enumerate() {
                let r = &runs[i];
                let packets = median(r.iter().map(|r| r.2).collect());
                let per_packet = median(r.iter().map(|r| r.1 / r.2).collect());
                let net = median(r.iter().map(|(ns, n, p)| (ns - empty * n) / p).collect());
                let label = if s.is_empty() { "the defaults".to_string() } else { format!("`{}`", s.join(" ")) };
                println!(
                    "| {} | {label} | {packets:.0} | {per_packet:.2} | {net:.0} | {:.2} |",
                    t.label(),
                    net * 880e3 / 1e9
                );
            }
        }
        Ok(())
    };
    let result = table();
    terminate(&mut server);
    result
}
