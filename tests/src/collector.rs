//! The real collector binary, run inside a lab namespace, scraped over that namespace's
//! loopback.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{lab::terminate, netns, scrape::{http_get, Metrics}};

pub struct Collector {
    child: Child,
    ns: String,
    addr: SocketAddr,
    /// The telemetry path (`--web.telemetry-path` if given).
    path: String,
    pub log: PathBuf,
}

/// The collector binary: $WG_COLLECTOR_BIN, or target/debug/wg-collector of this workspace,
/// built once per test process first (cargo does not rebuild another package's binary for
/// these tests, and a stale one would test old code).
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WG_COLLECTOR_BIN") {
        return Ok(p.into());
    }
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--package", "wg-collector", "--bin", "wg-collector"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    });
    if let Err(e) = built {
        bail!("building wg-collector failed: {e}");
    }
    Ok(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/wg-collector"))
}

impl Collector {
    /// Starts the collector in namespace `ns` with `args` and waits until it serves.
    pub fn start(ns: &str, args: &[&str]) -> Result<Self> {
        Self::start_with_log(ns, args, "info")
    }

    /// Like [`start`](Self::start), with RUST_LOG set to `filter`.
    pub fn start_with_log(ns: &str, args: &[&str], filter: &str) -> Result<Self> {
        let addr: SocketAddr = args
            .windows(2)
            .find(|w| w[0] == "--web.listen-address")
            .map_or("127.0.0.1:9586", |w| w[1])
            .parse()
            .context("--web.listen-address")?;
        let log = std::env::temp_dir().join(format!("{ns}-collector-{}.log", std::process::id()));
        let out = std::fs::File::create(&log)?;
        let bin = binary()?;
        let child = netns::cmd(ns, bin.to_str().unwrap())
            .args(["--poll-interval", "0.2"])
            .args(if args.contains(&"--web.listen-address") { vec![] } else { vec!["--web.listen-address".to_string(), addr.to_string()] })
            .args(args)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let path = args.windows(2).find(|w| w[0] == "--web.telemetry-path").map_or("/metrics", |w| w[1]).to_string();
        let mut c = Collector { child, ns: ns.to_string(), addr, path, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                bail!("collector exited with {status}: {}", c.log_text());
            }
            // It says so once it listens (with TLS or authentication, a plain scrape could
            // not tell).
            if c.log_text().contains("serving metrics") {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("collector did not serve within 15 s: {}", c.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET the telemetry path from inside the namespace.
    pub fn scrape(&self) -> Result<Metrics> {
        let (addr, path) = (self.addr, self.path.clone());
        let body = netns::within(&self.ns, move || http_get(addr, &path))?;
        Metrics::parse(&body)
    }

    /// GET `path` with request headers from inside the namespace: (head, body).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<(String, String)> {
        let addr = self.addr;
        let path = path.to_string();
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        netns::within(&self.ns, move || {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            crate::scrape::http_get_with(addr, &path, &h)
        })
    }

    /// Scrapes until `pred` holds; returns that page and how long it took.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&Metrics) -> bool) -> Result<(Metrics, Duration)> {
        let start = Instant::now();
        loop {
            let m = self.scrape()?;
            if pred(&m) {
                return Ok((m, start.elapsed()));
            }
            if start.elapsed() > timeout {
                bail!("condition not met within {timeout:?}; last page:\n{}", m.text);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The collector's process id (`ip netns exec` execs into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        terminate(&mut self.child);
        let _ = std::fs::remove_file(&self.log);
    }
}
