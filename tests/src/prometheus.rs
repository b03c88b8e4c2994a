//! Debian's Prometheus, run by tests on loopback inside a lab namespace, removed on drop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{netns, scrape::http_get_with};

/// Debian's Prometheus, on loopback inside a lab namespace, removed on drop.
pub struct Prometheus {
    child: std::process::Child,
    ns: String,
    log: PathBuf,
    port: u16,
}

impl Prometheus {
    pub fn start(ns: &str, config: &str, data: &Path) -> Self {
        Self::start_with(ns, config, data, 9090, &[])
    }

    /// On 127.0.0.1:`port`, with more flags (`--enable-feature=native-histograms`).
    pub fn start_with(ns: &str, config: &str, data: &Path, port: u16, flags: &[&str]) -> Self {
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let child = netns::cmd(ns, "prometheus")
            .args([
                &format!("--config.file={config}"),
                &format!("--storage.tsdb.path={}", data.display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .args(flags)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus (cargo xtask setup installs it)");
        let p = Prometheus { child, ns: ns.to_string(), log, port };
        let t0 = Instant::now();
        while p.query("vector(1)").is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "prometheus did not start:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of an instant query's first sample.
    pub fn query(&self, q: &str) -> Option<f64> {
        self.query_all(q)?.first().copied()
    }

    /// The values of an instant query's samples (empty: the query returned nothing; None: it
    /// failed). A native histogram's value is its count.
    pub fn query_all(&self, q: &str) -> Option<Vec<f64>> {
        let v = self.api(&format!("/api/v1/query?query={}", encode(q)))?;
        if v["status"] != "success" {
            return None;
        }
        let result = v["data"]["result"].as_array()?;
        let value =
            |r: &serde_json::Value| r["value"][1].as_str().or(r["histogram"][1]["count"].as_str())?.parse().ok();
        Some(result.iter().filter_map(value).collect())
    }

    /// A GET of the HTTP API, parsed.
    pub fn api(&self, path: &str) -> Option<serde_json::Value> {
        let (path, at) = (path.to_string(), std::net::SocketAddr::from(([127, 0, 0, 1], self.port)));
        let body = netns::within(&self.ns, move || http_get_with(at, &path, &[])).ok()?.1;
        serde_json::from_str(&body).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        crate::lab::terminate(&mut self.child);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Percent-encodes a query for a URL.
pub fn encode(q: &str) -> String {
    q.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
