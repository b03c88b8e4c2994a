//! `cargo xtask soak`: the release collector on a lab device for a long time (an hour by
//! default) under churn (peers added and removed 100 times a second, around 100 peers),
//! a scrape every second and a ping every second; its RSS and open file descriptors
//! sampled every 10 s. Prints the samples of each minute and a verdict: flat means the
//! last ten minutes' RSS stays within 10 % of the RSS after the first ten, and the file
//! descriptors do not grow.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use wg_tests::{
    lab::{key_hex, random_public_key},
    netns,
    scrape::http_get,
    Collector, Implementation, Lab,
};

use crate::scale::rss_kib;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

pub fn run(minutes: u64) -> Result<()> {
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    let lab = Lab::new(Implementation::WireguardGo)?;
    let c = Collector::start(&lab.a.ns, &[])?;
    let pid = c.pid();
    let (ns, peer) = (lab.a.ns.clone(), lab.b.tunnel_v4.to_string());
    let end = Instant::now() + Duration::from_secs(minutes * 60);

    let mut live: VecDeque<String> = VecDeque::new();
    let (mut changes, mut scrapes, mut failed) = (0u64, 0u64, 0u64);
    let mut samples: Vec<(f64, u64, usize)> = Vec::new();
    let start = Instant::now();
    let (mut next_scrape, mut next_sample) = (start, start);
    println!("| minute | RSS (MiB) | open fds | peer changes | scrapes (failed) |");
    println!("|---:|---:|---:|---:|---:|");
    while Instant::now() < end {
        let due = start + Duration::from_millis(10 * changes);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if live.len() < 100 || changes % 2 == 0 {
            let key = random_public_key();
            let n = changes % 60_000;
            lab.uapi_set(
                'a',
                &format!(
                    "public_key={}\nallowed_ip=10.{}.{}.{}/32\n",
                    key_hex(&key),
                    100 + n / 65536,
                    n / 256 % 256,
                    n % 256
                ),
            )?;
            live.push_back(key);
        } else if let Some(key) = live.pop_front() {
            lab.uapi_set('a', &format!("public_key={}\nremove=true\n", key_hex(&key)))?;
        }
        changes += 1;
        if Instant::now() >= next_scrape {
            next_scrape += Duration::from_secs(1);
            scrapes += 1;
            let ok = netns::within(&ns, || http_get("127.0.0.1:9586".parse().unwrap(), "/metrics")).is_ok();
            failed += (!ok) as u64;
            let _ = netns::run(netns::cmd(&ns, "ping").args(["-c", "1", "-W", "1", "-q", &peer]));
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(10);
            let t = start.elapsed().as_secs_f64();
            let (rss, fd) = (rss_kib(pid), fds(pid));
            ensure!(rss > 0, "the collector is gone: {}", c.log_text());
            if samples.len().is_multiple_of(6) {
                println!("| {:.0} | {:.1} | {fd} | {changes} | {scrapes} ({failed}) |", t / 60.0, rss as f64 / 1024.0);
            }
            samples.push((t, rss, fd));
        }
    }
    let window = |from: f64, to: f64| samples.iter().filter(move |s| s.0 >= from && s.0 < to);
    let total = minutes as f64 * 60.0;
    let settle = (total / 6.0).min(600.0);
    let base = window(settle, settle + 60.0).map(|s| s.1).max().unwrap_or(0) as f64;
    let last_max = window(total - settle, total + 1.0).map(|s| s.1).max().unwrap_or(0) as f64;
    let (fd_first, fd_last) = (samples.first().map_or(0, |s| s.2), samples.last().map_or(0, |s| s.2));
    let fd_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    let flat = last_max <= base * 1.10 && fd_last <= fd_first + 2;
    println!(
        "\n{minutes} min, {changes} peer changes ({:.0}/s), {scrapes} scrapes ({failed} failed): RSS {:.1} MiB after {:.1} min, at most {:.1} MiB in the last {:.1} min ({:+.1} %); fds {fd_first} at start, {fd_last} at the end (max {fd_max}): {}",
        changes as f64 / start.elapsed().as_secs_f64(),
        base / 1024.0,
        settle / 60.0,
        last_max / 1024.0,
        settle / 60.0,
        (last_max / base - 1.0) * 100.0,
        if flat { "flat" } else { "GROWING" }
    );
    ensure!(failed == 0, "{failed} scrapes failed");
    ensure!(flat, "memory or file descriptors grew");
    Ok(())
}
