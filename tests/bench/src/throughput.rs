//! Tunnel throughput with and without our programs: the same lab tunnel (wireguard-go, then
//! boringtun), TCP bulk and small-packet UDP through it with iperf3, the variants alternating
//! (none, ours, none, ours, ...) so noise hits both alike; medians. "Ours" is the release
//! collector at its default poll interval with everything attached (both wg hooks, both underlay hooks, latency and
//! encap/decap on). A separate run with --bpf.stats reads the kernel's own accounting of each
//! program during the same traffic (stats cost some ns per run themselves, so that run is not
//! in the ratio).

use std::process::{Child, Stdio};

use anyhow::{Context, Result};
use wg_tests::{lab::terminate, netns, Collector, Implementation, Lab, Metrics};

use crate::median;

/// What one iperf3 run gives: TCP in bits/s, UDP in packets/s received.
#[derive(Clone, Copy)]
enum Traffic {
    TcpBulk,
    SmallUdp,
}

impl Traffic {
    fn label(self) -> &'static str {
        match self {
            Self::TcpBulk => "TCP bulk (Gbit/s)",
            Self::SmallUdp => "UDP, 64-byte payloads (kpackets/s received)",
        }
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

fn iperf(lab: &Lab, t: Traffic, secs: u32) -> Result<f64> {
    let b = lab.b.tunnel_v4.to_string();
    let secs_s = secs.to_string();
    let mut args = vec!["-c", b.as_str(), "-t", secs_s.as_str(), "-J"];
    if let Traffic::SmallUdp = t {
        args.extend(["-u", "-b", "0", "-l", "64"]);
    }
    let out = lab.exec('a', "iperf3", &args)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let end = &v["end"];
    Ok(match t {
        Traffic::TcpBulk => end["sum_received"]["bits_per_second"].as_f64().context("bits_per_second")? / 1e9,
        Traffic::SmallUdp => {
            let s = &end["sum"];
            let got = s["packets"].as_f64().context("packets")? - s["lost_packets"].as_f64().unwrap_or(0.0);
            got / s["seconds"].as_f64().context("seconds")? / 1e3
        }
    })
}

pub fn run(quick: bool) -> Result<()> {
    let (reps, secs) = if quick { (1, 1) } else { (7, 5) };
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    let mut costs = Vec::new();
    println!("| implementation | traffic | no programs | all our programs | ratio |");
    println!("|---|---|---:|---:|---:|");
    for imp in [Implementation::WireguardGo, Implementation::Boringtun] {
        let lab = Lab::new(imp)?;
        let _server = Server(
            netns::cmd(&lab.b.ns, "iperf3")
                .args(["-s", "-B", &lab.b.tunnel_v4.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        for t in [Traffic::TcpBulk, Traffic::SmallUdp] {
            let (mut none, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                none.push(iperf(&lab, t, secs)?);
                // The poll interval users get (the test harness polls 5×/s, which on two
                // cores takes CPU from the tunnel being measured).
                let c = Collector::start(&lab.a.ns, &["--poll-interval", "1"])?;
                ours.push(iperf(&lab, t, secs)?);
                drop(c); // unmounts its bpffs: the programs detach
            }
            let (n, o) = (median(none), median(ours));
            println!("| {} | {} | {n:.2} | {o:.2} | {:.1} % |", imp.label(), t.label(), o / n * 100.0);
            // The kernel's accounting of each program during the same traffic.
            let c = Collector::start(&lab.a.ns, &["--bpf.stats"])?;
            let before = c.scrape()?;
            iperf(&lab, t, secs)?;
            let after = c.scrape()?;
            costs.push((imp.label(), t, before, after, lab.a.iface.clone()));
        }
    }
    println!("\n| implementation | traffic | program | runs | ns per run (bpf stats) |");
    println!("|---|---|---|---:|---:|");
    for (imp, t, before, after, dev) in costs {
        for prog in ["wg_plain_egress", "wg_plain_ingress", "wg_under_egress", "wg_under_ingress"] {
            let l = [("device", dev.as_str()), ("program", prog)];
            let delta = |m: &Metrics, f: &str| m.get_or_zero(f, &l);
            let runs = delta(&after, "wireguard_collector_bpf_runs_total")
                - delta(&before, "wireguard_collector_bpf_runs_total");
            let time = delta(&after, "wireguard_collector_bpf_run_time_seconds_total")
                - delta(&before, "wireguard_collector_bpf_run_time_seconds_total");
            let traffic = t.label().split(" (").next().unwrap_or_default();
            println!(
                "| {imp} | {traffic} | {prog} | {runs:.0} | {:.0} |",
                if runs > 0.0 { time * 1e9 / runs } else { f64::NAN }
            );
        }
    }
    Ok(())
}
