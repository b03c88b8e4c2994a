//! Load: `wrk` with 200 connections on /metrics of the release collector at 1,000 peers for
//! 30 s (quick: 100 peers, 3 s). Meanwhile a peer is added and the time until its allowed IP
//! is in the pinned host map is taken (read with bpftool, not through the busy endpoint): the
//! scrape crowd must not hold up the map sync.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wg_tests::{
    lab::{key_hex, random_public_key, wait_until},
    netns, Collector,
};

use crate::scale::lab_with_peers;

/// A value of wrk's --latency output, in ms ("1.23ms", "2.01s", "850.00us").
fn ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

pub fn run(quick: bool) -> Result<()> {
    let (peers, secs) = if quick { (100, 3) } else { (1000, 30) };
    std::env::set_var("WG_COLLECTOR_BIN", crate::collector_binary()?);
    let lab = lab_with_peers(peers)?;
    let c = Collector::start(&lab.a.ns, &[])?;
    let wrk = netns::cmd(&lab.a.ns, "wrk")
        .args([
            "-t",
            "2",
            "-c",
            "200",
            "-d",
            &format!("{secs}s"),
            "--latency",
            "--timeout",
            "10s",
            "http://127.0.0.1:9586/metrics",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("wrk (cargo xtask setup installs it)")?;
    std::thread::sleep(Duration::from_secs(secs as u64 / 2));
    let in_map = || c.host_in_maps(&lab.a.iface, "10.151.0.1".parse().unwrap());
    lab.uapi_set('a', &format!("public_key={}\nallowed_ip=10.151.0.1/32\n", key_hex(&random_public_key())))?;
    let t = Instant::now();
    wait_until(Duration::from_secs(10), in_map)?;
    let synced = t.elapsed();
    let out = String::from_utf8(wrk.wait_with_output()?.stdout)?;
    let field = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(|v| v.trim().to_string());
    let requests: f64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .context("wrk output")?;
    let errors =
        out.lines().filter(|l| l.contains("Socket errors") || l.contains("Non-2xx")).collect::<Vec<_>>().join("; ");
    let (p50, p99) =
        (field("50%").and_then(|v| ms(&v)).context("p50")?, field("99%").and_then(|v| ms(&v)).context("p99")?);
    println!(
        "| peers | connections | seconds | requests | requests/s | p50 | p99 | errors | new peer in the maps after |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    println!(
        "| {peers} | 200 | {secs} | {requests:.0} | {:.0} | {p50:.0} ms | {p99:.0} ms | {} | {:.0} ms |",
        requests / secs as f64,
        if errors.is_empty() { "0".to_string() } else { errors.clone() },
        synced.as_secs_f64() * 1e3
    );
    ensure!(errors.is_empty(), "wrk saw errors: {out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_wrk_durations() {
        assert_eq!(super::ms("850.00us"), Some(0.85));
        assert_eq!(super::ms("12.5ms"), Some(12.5));
        assert_eq!(super::ms("1.92s"), Some(1920.0));
    }
}
