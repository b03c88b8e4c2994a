//! Kernel WireGuard's state at scale, in the qemu guest `cargo xtask bench` boots: lab side a's
//! kernel device gets that many peers (one `wg addconf` per size), then the collector's scrape
//! (generic netlink multipart dumps, the maps, the page), prometheus_wireguard_exporter's
//! (`wg show` per scrape) and `wg show <dev> dump` itself are timed alternately. Under TCG the
//! absolute times mean little; the ratios, measured side by side, stand.
//!
//! The kernel command line says what to measure: `wgscale.peers=1000,10000,50000`,
//! `wgscale.reps=5`, `wgscale.profile=1` (three scrapes of each size under `perf record -a`
//! before the timed rounds, and its report: `cargo xtask bench --vm-only --profile`),
//! `wgscale.exporter=10000` (the largest size the exporter is scraped at:
//! its scrape grows with the square of the peers, minutes at 10,000 under TCG, so above
//! 1,000 peers it is scraped once, in the first round). One console line per size:
//! `vm-scale: row PEERS COLLECTOR_S EXPORTER_S DUMP_S PAGE_BYTES DUMP_BYTES NETLINK_S MAPS_S
//! HEADERS_S RATIO GZIP_S GZIP_BYTES GZIP_RATIO ZSTD_S ZSTD_BYTES ZSTD_RATIO` (medians; `-`
//! where not measured): where the collector's scrape went, as its own page tells (reading
//! WireGuard by netlink and the maps in the last scrape, the mean time from a timed request's
//! arrival to its answer's headers, plain and compressed scrapes alike: reading and encoding;
//! the rest is sending the page), the median of each round's collector / dump, and the same
//! for scrapes that ask for gzip, as Prometheus does by default, and for zstd, as it does
//! with `--enable-feature=zstd-scrape`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wg_tests::{
    exporter::{scrape, scrape_with, Exporter, ACCEPT_GZIP, ACCEPT_ZSTD},
    netns,
    vm::SCALE,
    Collector, Implementation, Lab,
};

fn main() {
    SCALE.run(&[("kernel WireGuard's state: collector, exporter and wg show dump side by side", scale)])
}

/// `wgscale.NAME=` of the kernel command line.
fn param(name: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let key = format!("wgscale.{name}=");
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(&key).map(str::to_string))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `wg show <dev> dump` as a user runs it: seconds and bytes printed.
fn dump(lab: &Lab) -> Result<(f64, usize)> {
    let t = Instant::now();
    let out = netns::cmd(&lab.a.ns, "/usr/bin/wg").args(["show", &lab.a.iface, "dump"]).output()?;
    ensure!(out.status.success(), "wg show dump: {}", String::from_utf8_lossy(&out.stderr));
    Ok((t.elapsed().as_secs_f64(), out.stdout.len()))
}

fn scale() -> Result<()> {
    let sizes: Vec<usize> = param("peers")
        .unwrap_or("1000".into())
        .split(',')
        .map(|s| s.parse().with_context(|| format!("wgscale.peers: {s}")))
        .collect::<Result<_>>()?;
    let reps: usize = param("reps").map_or(Ok(3), |s| s.parse())?;
    let exporter_max: usize = param("exporter").map_or(Ok(10_000), |s| s.parse())?;
    let lab = Lab::new(Implementation::Kernel)?;
    let mut have = 1;
    for n in sizes {
        let t = Instant::now();
        lab.add_peers(n - have + 1, &[])?;
        have = n;
        println!("vm-scale: {n} peers added in {:.1} s", t.elapsed().as_secs_f64());
        // The poll loop reads the whole device every --poll-interval. Under TCG a 10k-peer
        // reading takes the guest's one emulation thread ~0.5 s, so the default 1 s poll took
        // half the CPU from the scrape and from `wg show dump` alike (and made the scrape wait
        // for the poll's reading under way); on hardware it is ~3 % of a core. 30 s keeps it
        // out of the timed rounds, as it is on hardware.
        let c = Collector::start(&lab.a.ns, &["--poll-interval", "30"])?;
        let dev = [("device", lab.a.iface.as_str())];
        c.wait_for(Duration::from_secs(600), |m| m.get("wireguard_peers", &dev) == Some(n as f64))?;
        let exporter = if n <= exporter_max { Some(Exporter::start(&lab.a.ns, 9587, &lab.a.iface)?) } else { None };
        // A warm-up of each, then the three alternating.
        let (_, page) = scrape(&lab.a.ns, 9586)?;
        let (_, dumped) = dump(&lab)?;
        let exporter_reps = if n <= 1000 { reps } else { 1 };
        if exporter.is_some() && exporter_reps > 1 {
            scrape(&lab.a.ns, 9587)?;
        }
        if param("profile").is_some() {
            profile(&lab.a.ns, n)?;
        }
        let before = c.scrape()?;
        let (mut collector, mut gzip, mut zstd, mut theirs, mut dumps) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut gzip_bytes, mut zstd_bytes) = (0, 0);
        // Each on a quiet guest: what the one before leaves to do (a process exiting, the
        // collector dropping its page) would otherwise be charged to the next (the dump
        // measured 274-515 ms at 10,000 peers without the pause).
        let quiet = || std::thread::sleep(Duration::from_secs(1));
        for rep in 0..reps {
            quiet();
            collector.push(scrape(&lab.a.ns, 9586)?.0);
            // As Prometheus asks by default (scrape_configs' enable_compression), and with
            // --enable-feature=zstd-scrape.
            for (asks, times, size) in
                [(ACCEPT_GZIP, &mut gzip, &mut gzip_bytes), (ACCEPT_ZSTD, &mut zstd, &mut zstd_bytes)]
            {
                quiet();
                let (seconds, bytes) = scrape_with(&lab.a.ns, 9586, asks)?;
                times.push(seconds);
                *size = bytes;
            }
            if exporter.is_some() && rep < exporter_reps {
                quiet();
                theirs.push(scrape(&lab.a.ns, 9587)?.0);
            }
            quiet();
            dumps.push(dump(&lab)?.0);
            println!("vm-scale: {n} peers, round {rep} done at {:.0} s", t.elapsed().as_secs_f64());
        }
        let after = c.scrape()?;
        let exporter_s = if theirs.is_empty() { "-".to_string() } else { format!("{:.6}", median(theirs)) };
        let read = |source| after.get("wireguard_collector_scrape_duration_seconds", &[("source", source)]);
        let requests = |m: &wg_tests::Metrics, part| {
            m.get(&format!("wireguard_collector_http_request_duration_seconds_{part}"), &[("handler", "metrics")])
        };
        let (netlink, maps) = (read("netlink").context("netlink time")?, read("bpf").context("maps time")?);
        let delta = |part| {
            Ok::<_, anyhow::Error>(requests(&after, part).context(part)? - requests(&before, part).context(part)?)
        };
        let headers = delta("sum")? / delta("count")?;
        // The guest's speed drifts (by half within minutes under a busy host): each round's
        // collector / dump ratio, taken a few seconds apart, is steadier than the ratio of
        // the medians.
        let ratio = median(collector.iter().zip(&dumps).map(|(c, d)| c / d).collect());
        let of_dump = |times: &[f64]| median(times.iter().zip(&dumps).map(|(c, d)| c / d).collect());
        let (gzip_ratio, zstd_ratio) = (of_dump(&gzip), of_dump(&zstd));
        println!(
            "vm-scale: row {n} {:.6} {exporter_s} {:.6} {page} {dumped} {netlink:.6} {maps:.6} {headers:.6} {ratio:.3} {:.6} {gzip_bytes} {gzip_ratio:.3} {:.6} {zstd_bytes} {zstd_ratio:.3}",
            median(collector),
            median(dumps.clone()),
            median(gzip),
            median(zstd)
        );
    }
    Ok(())
}

/// Where the guest's time goes during three scrapes of the collector: `perf record` of every
/// CPU (the scraper's reading of the page counts as much as the collector's work), then the
/// report, by symbol, of the collector's and the scraper's threads, and the call chains of
/// the top ones (whole in the kernel; in the collector with frame pointers:
/// `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C force-frame-pointers=yes"`).
fn profile(ns: &str, peers: usize) -> Result<()> {
    let data = "/tmp/perf.data";
    let mut perf = std::process::Command::new("/usr/bin/perf")
        .args(["record", "-a", "-g", "-e", "cpu-clock", "-o", data])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("perf record")?;
    // perf's own start, out of the samples.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        scrape(ns, 9586)?;
    }
    // SAFETY: a signal to our own child, which is still running.
    unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
    perf.wait()?;
    let report = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("/usr/bin/perf")
            // The collector's threads and the scraper's (this binary, /bin/vm-suite): not idle.
            .args(["report", "--stdio", "-i", data, "--comms", "tokio-rt-worker,wg-collector,vm-suite"])
            .args(args)
            .output()
            .context("perf report")?;
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            println!("vm-scale: profile {peers} | {}", line.trim_end());
        }
        Ok(())
    };
    report(&["--no-children", "--sort", "comm,dso,symbol", "-g", "none", "--percent-limit", "0.7"])?;
    report(&["--children", "--sort", "symbol", "-g", "none", "--percent-limit", "2"])?;
    report(&["--no-children", "--sort", "symbol", "-g", "caller,0.5,callee,function,percent", "--percent-limit", "3"])
}
