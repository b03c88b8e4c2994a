//! Scrape time and memory at 1 to 50,000 peers, side by side with
//! prometheus_wireguard_exporter on the same device, and freshness (a peer added → its series
//! on /metrics). A wireguard-go device in a lab namespace gets its peers in one `wg addconf`
//! (random keys: peers need not answer to exist).

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use wg_tests::{
    lab::{random_public_key, terminate, tool, wait_until},
    netns,
    scrape::http_get_bytes,
    Collector, Implementation, Lab,
};

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One GET /metrics from inside the namespace: (seconds, body bytes).
fn scrape(ns: &str, port: u16) -> Result<(f64, usize)> {
    scrape_with(ns, port, &[])
}

pub fn scrape_with(ns: &str, port: u16, headers: &'static [(&'static str, &'static str)]) -> Result<(f64, usize)> {
    let t = Instant::now();
    let (head, body) =
        netns::within(ns, move || http_get_bytes(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics", headers))?;
    anyhow::ensure!(head.contains(" 200 "), "scrape: {head}");
    Ok((t.elapsed().as_secs_f64(), body.len()))
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// prometheus_wireguard_exporter in the namespace (it runs `wg show all dump` per scrape).
struct Exporter(Child);

impl Exporter {
    /// Pointed at `iface` only (`-i`): by default it runs `wg show all`, which reads every
    /// UAPI socket of the machine, other labs' devices included.
    fn start(ns: &str, port: u16, iface: &str) -> Result<Self> {
        let bin = tool("prometheus_wireguard_exporter")?;
        let child = netns::cmd(ns, &bin)
            .args(["-l", "127.0.0.1", "-p", &port.to_string(), "-i", iface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let e = Exporter(child);
        // Listening is enough: at 50k peers one of its scrapes takes minutes.
        let addr = format!("127.0.0.1:{port}");
        let ns = ns.to_string();
        wait_until(Duration::from_secs(10), || {
            let (ns, addr) = (ns.clone(), addr.clone());
            netns::within(&ns, move || Ok(std::net::TcpStream::connect(addr)?)).is_ok()
        })
        .context("prometheus_wireguard_exporter did not listen")?;
        Ok(e)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Freshness: a peer added → its series on /metrics (the scrape itself rereads state).
fn continue_freshness(lab: &Lab, c: &Collector, n: usize, out: &mut Vec<(usize, f64)>) -> Result<()> {
    let key = random_public_key();
    let t = Instant::now();
    lab.wg('a', &["set", "{iface}", "peer", &key, "allowed-ips", "10.250.0.1/32"])?;
    c.wait_for(Duration::from_secs(10), |m| m.mentions("public_key", &key))?;
    out.push((n, t.elapsed().as_secs_f64()));
    Ok(())
}

/// A lab whose device a has `n` peers: b, and random others, added in one `wg addconf`.
pub fn lab_with_peers(n: usize) -> Result<Lab> {
    let lab = Lab::new(Implementation::WireguardGo)?;
    let mut conf = String::new();
    for i in 0..n.saturating_sub(1) {
        conf.push_str(&format!(
            "[Peer]\nPublicKey = {}\nAllowedIPs = 10.{}.{}.{}/32\n\n",
            random_public_key(),
            100 + i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    let path = std::env::temp_dir().join(format!("{}-bench.conf", lab.a.ns));
    std::fs::write(&path, conf)?;
    lab.wg('a', &["addconf", "{iface}", path.to_str().unwrap()])?;
    std::fs::remove_file(&path)?;
    Ok(lab)
}

fn ms(v: &[f64], q: f64) -> f64 {
    quantile(v.to_vec(), q) * 1e3
}

/// `exporter`: measure prometheus_wireguard_exporter beside it (`--scrape-only` does not).
pub fn run(quick: bool, exporter: bool) -> Result<()> {
    let (counts, reps): (&[usize], usize) = if quick { (&[1, 100], 3) } else { (&[1, 1000, 10_000, 50_000], 7) };
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    let have_exporter = exporter && tool("prometheus_wireguard_exporter").is_ok();
    println!("| peers | collector scrape median | p99 | gzip median | with --scrape.max-age 1: median | p99 | page | RSS | exporter scrape median | p99 | page | ratio (exporter / collector) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut freshness = Vec::new();
    // The poll interval users get (the test harness polls faster).
    let defaults = ["--poll-interval", "1"];
    for &n in counts {
        let lab = lab_with_peers(n)?;
        let mut c = Collector::start(&lab.a.ns, &defaults)?;
        // Above 10k peers one scrape of the exporter ran past 10 minutes here: not measured.
        let exporter =
            if have_exporter && n <= 10_000 { Some(Exporter::start(&lab.a.ns, 9587, &lab.a.iface)?) } else { None };
        let (mut ours, mut gzip, mut theirs, mut our_page, mut their_page) = (Vec::new(), Vec::new(), Vec::new(), 0, 0);
        // Warm up both, then alternate. The exporter gets fewer rounds where one scrape of it
        // takes longer than 20 s (the table says how many).
        scrape(&lab.a.ns, 9586)?;
        let mut exporter_reps = reps;
        for i in 0..reps {
            let (t, b) = scrape(&lab.a.ns, 9586)?;
            ours.push(t);
            our_page = b;
            // As Prometheus asks.
            gzip.push(scrape_with(&lab.a.ns, 9586, &[("Accept-Encoding", "gzip")])?.0);
            if exporter.is_some() && i < exporter_reps {
                let (t, b) = scrape(&lab.a.ns, 9587)?;
                theirs.push(t);
                their_page = b;
                if t > 20.0 {
                    exporter_reps = 1;
                }
            }
        }
        let rss = rss_kib(c.pid());
        drop(exporter);
        continue_freshness(&lab, &c, n, &mut freshness)?;

        // The same device, scrapes sharing the poll loop's readings.
        let mut args = defaults.to_vec();
        args.extend(["--scrape.max-age", "1"]);
        c.restart_with(&args)?;
        scrape(&lab.a.ns, 9586)?;
        let shared: Vec<f64> = (0..reps).map(|_| scrape(&lab.a.ns, 9586).map(|(t, _)| t)).collect::<Result<_>>()?;

        let exporter_cells = if theirs.is_empty() {
            "not measured | | | ".to_string()
        } else {
            format!(
                "{:.1} ms{} | {:.1} ms | {:.0} KiB | {:.1}×",
                ms(&theirs, 0.5),
                if theirs.len() < reps { format!(" ({} scrape)", theirs.len()) } else { String::new() },
                ms(&theirs, 0.99),
                their_page as f64 / 1024.0,
                ms(&theirs, 0.5) / ms(&ours, 0.5)
            )
        };
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} KiB | {:.1} MiB | {exporter_cells} |",
            ms(&ours, 0.5),
            ms(&ours, 0.99),
            ms(&gzip, 0.5),
            ms(&shared, 0.5),
            ms(&shared, 0.99),
            our_page as f64 / 1024.0,
            rss as f64 / 1024.0,
        );
    }
    println!();
    println!("| peers | freshness: peer added → its series on /metrics |");
    println!("|---:|---:|");
    for (n, f) in freshness {
        println!("| {n} | {:.0} ms |", f * 1e3);
    }
    Ok(())
}
