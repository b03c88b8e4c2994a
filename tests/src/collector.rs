//! The real collector binary, run inside a lab namespace, scraped over that namespace's
//! loopback.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    lab::terminate,
    netns,
    scrape::{http_get, Metrics},
};

pub struct Collector {
    child: Child,
    ns: String,
    addr: SocketAddr,
    /// The telemetry path (`--web.telemetry-path` if given).
    path: String,
    pub log: PathBuf,
    args: Vec<String>,
    filter: String,
    /// A bpffs of this collector's own, its --bpf.pin-path: it outlives restarts and is
    /// unmounted (which detaches what is pinned there) when the collector is dropped.
    pub pins: Option<PathBuf>,
    /// Its limit on open files (soft and hard), if the test sets one.
    nofile: Option<u64>,
}

/// Where test collectors mount their bpffs: /run, which `ip netns exec` leaves as it is (it
/// mounts a fresh /sys, which would hide /sys/fs/bpf).
const PIN_ROOT: &str = "/run/wg-tests-bpf";

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
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
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

    /// Like [`start`](Self::start), under a limit of `nofile` open files (soft and hard, as
    /// systemd's LimitNOFILE= sets them).
    pub fn start_limited(ns: &str, args: &[&str], nofile: u64) -> Result<Self> {
        Self::start_inner(ns, args, "info", Some(nofile))
    }

    /// Like [`start`](Self::start), with RUST_LOG set to `filter`. Unless `args` say
    /// otherwise, it pins into a bpffs of its own.
    pub fn start_with_log(ns: &str, args: &[&str], filter: &str) -> Result<Self> {
        Self::start_inner(ns, args, filter, None)
    }

    fn start_inner(ns: &str, args: &[&str], filter: &str, nofile: Option<u64>) -> Result<Self> {
        // An interface (wg0:9586) is scraped from elsewhere: the test knows its addresses.
        let addr: SocketAddr = args
            .windows(2)
            .find(|w| w[0] == "--web.listen-address")
            .map_or("127.0.0.1:9586", |w| w[1])
            .parse()
            .unwrap_or_else(|_| "127.0.0.1:9586".parse().unwrap());
        sweep_stale_pins();
        let log = std::env::temp_dir().join(format!("{ns}-collector-{}.log", std::process::id()));
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let pins = if args.iter().any(|a| a == "--bpf.pin-path" || a == "--bpf.no-pin") {
            None
        } else {
            let dir = mount_pin_root(ns)?;
            args.extend(["--bpf.pin-path".to_string(), dir.display().to_string()]);
            Some(dir)
        };
        let path =
            args.windows(2).find(|w| w[0] == "--web.telemetry-path").map_or("/metrics", |w| w[1].as_str()).to_string();
        let child = Self::spawn(ns, addr, &args, filter, &log, nofile)?;
        let mut c =
            Collector { child, ns: ns.to_string(), addr, path, log, args, filter: filter.to_string(), pins, nofile };
        c.wait_serving(0)?;
        Ok(c)
    }

    fn spawn(
        ns: &str,
        addr: SocketAddr,
        args: &[String],
        filter: &str,
        log: &std::path::Path,
        nofile: Option<u64>,
    ) -> Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let bin = binary()?;
        let mut cmd = netns::cmd(ns, bin.to_str().unwrap());
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit only, between fork and exec; ip netns exec passes it on.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Ok(cmd
            .args(if args.iter().any(|a| a == "--poll-interval") { vec![] } else { vec!["--poll-interval", "0.2"] })
            .args(if args.iter().any(|a| a == "--web.listen-address") {
                vec![]
            } else {
                vec!["--web.listen-address".to_string(), addr.to_string()]
            })
            .args(args)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?)
    }

    /// Waits until the log says "serving metrics" for the `n`th time (counting from 0).
    fn wait_serving(&mut self, n: usize) -> Result<()> {
        // It serves once its programs are attached: under qemu's TCG the verifier takes
        // seconds a device (8 s for one device's four on 6.12), and --netns attaches two.
        const WITHIN: Duration = Duration::from_secs(30);
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("collector exited with {status}: {}", self.log_text());
            }
            // It says so once it listens (with TLS or authentication, a plain scrape could
            // not tell).
            if self.log_text().matches("serving metrics").count() > n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("collector did not serve within {} s: {}", WITHIN.as_secs(), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the collector (SIGTERM) and starts it again with the same arguments and pins,
    /// as an upgrade would; returns once the new one serves. Its log goes on in the same
    /// file.
    pub fn restart(&mut self) -> Result<()> {
        let served = self.log_text().matches("serving metrics").count();
        self.stop();
        self.child = Self::spawn(&self.ns, self.addr, &self.args, &self.filter, &self.log, self.nofile)?;
        self.wait_serving(served)
    }

    /// Like [`restart`](Self::restart), with other arguments (the same pins).
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Some(dir) = &self.pins {
            args.extend(["--bpf.pin-path".to_string(), dir.display().to_string()]);
        }
        self.args = args;
        self.restart()
    }

    /// Stops the collector (SIGTERM), leaving its pins; [`restart`](Self::restart) or drop
    /// follows.
    pub fn stop(&mut self) {
        terminate(&mut self.child);
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

    /// The bpffs directory it pins into (its own, unless the test gave --bpf.pin-path).
    pub fn pin_path(&self) -> Option<&std::path::Path> {
        self.pins.as_deref()
    }

    /// The collector's process id (`ip netns exec` execs into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether IPv4 host address `addr` is in `device`'s pinned host map (read with bpftool,
    /// not through the collector's endpoint): the map sync seen from the kernel's side.
    pub fn host_in_maps(&self, device: &str, addr: std::net::Ipv4Addr) -> bool {
        let Some(pins) = &self.pins else { return false };
        let map = pins.join(device).join("HOSTS_V4");
        let key: Vec<String> = addr.octets().iter().map(|b| b.to_string()).collect();
        let mut args = vec!["bpftool", "map", "lookup", "pinned", map.to_str().unwrap(), "key"];
        args.extend(key.iter().map(String::as_str));
        netns::sh(&args).is_ok()
    }

    /// Its open fds (count, and where they point) at their fewest over a second: a refresh
    /// in progress holds sockets for a moment.
    pub fn quiet_fds(&self) -> (usize, Vec<String>) {
        let mut best: Option<(usize, Vec<String>)> = None;
        for _ in 0..10 {
            let targets: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .map(|d| d.flatten().filter_map(|e| std::fs::read_link(e.path()).ok()).collect::<Vec<_>>())
                .unwrap_or_default()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            if best.as_ref().is_none_or(|b| targets.len() < b.0) {
                best = Some((targets.len(), targets));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        best.unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        terminate(&mut self.child);
        if let Some(dir) = &self.pins {
            unmount_pin_root(dir);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Mounts a fresh bpffs for one collector: /run/wg-tests-bpf/<pid>-<n>.
fn mount_pin_root(ns: &str) -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(PIN_ROOT).join(format!("{}-{n}-{ns}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    netns::sh(&["mount", "-t", "bpf", "bpf", dir.to_str().unwrap()])
        .with_context(|| format!("mounting bpffs on {}", dir.display()))?;
    Ok(dir)
}

fn unmount_pin_root(dir: &std::path::Path) {
    let _ = netns::sh(&["umount", "--lazy", dir.to_str().unwrap()]);
    let _ = std::fs::remove_dir(dir);
}

/// Unmounts the bpffs of test processes that died without dropping their collector.
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((pid, _)) = name.split_once('-') else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            unmount_pin_root(&e.path());
        }
    }
}
