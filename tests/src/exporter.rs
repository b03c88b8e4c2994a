//! prometheus_wireguard_exporter, the exporter people run today, beside the collector in
//! the scale benchmarks (on the host and in the kernel-WireGuard guest), and a timed scrape
//! of either from inside a namespace.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    lab::{terminate, tool, wait_until},
    netns,
    scrape::http_get_into,
};

/// What timed scrapes read into, kept from one to the next as Prometheus keeps its scrape
/// buffers: the time is then the server's and the wire's, not the reader's allocator's (a
/// fresh buffer grown by doubling, and the body copied out of it once more, cost a quarter of
/// a 17 MB page's scrape in the qemu guest).
static READ_INTO: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Request headers of a scrape asking for gzip, as Prometheus does by default.
pub const ACCEPT_GZIP: &[(&str, &str)] = &[("Accept-Encoding", "gzip")];
/// Asking for zstd, as Prometheus does with `--enable-feature=zstd-scrape`.
pub const ACCEPT_ZSTD: &[(&str, &str)] = &[("Accept-Encoding", "zstd")];

/// One GET /metrics from inside the namespace: (seconds, body bytes).
pub fn scrape(ns: &str, port: u16) -> Result<(f64, usize)> {
    scrape_with(ns, port, &[])
}

pub fn scrape_with(ns: &str, port: u16, headers: &'static [(&'static str, &'static str)]) -> Result<(f64, usize)> {
    let t = Instant::now();
    let (head, body) = netns::within(ns, move || {
        let mut raw = READ_INTO.lock().unwrap_or_else(|e| e.into_inner());
        raw.clear();
        let (head, body) = http_get_into(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics", headers, &mut raw)?;
        Ok((head, raw.len() - body))
    })?;
    anyhow::ensure!(head.contains(" 200 "), "scrape: {head}");
    Ok((t.elapsed().as_secs_f64(), body))
}

/// prometheus_wireguard_exporter in the namespace (it runs `wg show all dump` per scrape).
pub struct Exporter(Child);

impl Exporter {
    /// Pointed at `iface` only (`-i`): by default it runs `wg show all`, which reads every
    /// UAPI socket of the machine, other labs' devices included.
    pub fn start(ns: &str, port: u16, iface: &str) -> Result<Self> {
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
