//! The boot suite, run by systemd inside the Debian 13 guest that `cargo xtask vmtest --boot`
//! boots: the .deb installed with dpkg, a kernel wg0 brought up by wg-quick with its peer in a
//! namespace, and the shipped unit, unmodified, driven by systemctl. Each check reads exact
//! ping counts from /metrics; the verdict goes to qemu (wg_tests::vm).

use std::{
    net::SocketAddr,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use wg_tests::{lab::settled, netns::run, scrape::http_get, vm::BOOT, Metrics};

const DEB: &str = "/root/wg-collector.deb";
const PEER_ADDR: &str = "10.77.0.2";
/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39): what the unit grants and the collector keeps.
const CAPS: u64 = (1 << 12) | (1 << 38) | (1 << 39);

/// The peer's public key, set up by the check that brings up wg0.
static PEER_KEY: OnceLock<String> = OnceLock::new();

fn main() {
    // Type=simple: our own start job is done, so this returns once the boot is.
    let state = cmd("systemctl", &["is-system-running", "--wait"]).unwrap_or_else(|e| e.to_string());
    println!("boot-suite: systemd is {}; kernel {}", state.trim(), cmd("uname", &["-r"]).unwrap_or_default().trim());
    BOOT.run(&[
        ("dpkg -i: files in place, the service neither enabled nor started", installed),
        ("wg-quick up wg0, systemctl enable --now: loopback only, its capabilities, 20 pings exact", enabled),
        ("systemctl reload: the same process, the counts go on", reloaded),
        ("Type=notify: STATUS= says what it follows; the watchdog restarts a hung collector", watched),
        ("stopped: the pinned programs count on; start and restart keep the counts", stopped_and_restarted),
        ("dpkg -i again (upgrade): restarted by the package, the counts kept", upgraded),
        ("systemctl stop and wg-collector --bpf.unpin leave nothing attached", unpinned),
        ("dpkg --purge leaves none of the package's files", purged),
    ])
}

/// Runs a program; its stdout, or an error with its stderr.
fn cmd(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}

/// `systemctl <verb> wg-collector` whatever its exit status (is-enabled and is-active exit
/// non-zero for "disabled" and "inactive"): what it prints.
fn systemctl_says(verb: &str) -> Result<String> {
    let out = Command::new("systemctl").args([verb, "wg-collector"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main_pid() -> Result<u32> {
    Ok(cmd("systemctl", &["show", "--property=MainPID", "--value", "wg-collector"])?.trim().parse()?)
}

fn scrape() -> Result<Metrics> {
    let addr: SocketAddr = "127.0.0.1:9586".parse()?;
    Metrics::parse(&http_get(addr, "/metrics")?)
}

/// The peer's transmitted and received packets on wg0, once they have stopped moving.
fn counts() -> Result<(f64, f64)> {
    let key = PEER_KEY.get().context("wg0 was never brought up")?;
    let labels = [("device", "wg0"), ("public_key", key.as_str())];
    let read = || -> Option<(f64, f64)> {
        let m = scrape().ok()?;
        Some((
            m.get("wireguard_peer_transmit_packets_total", &labels)?,
            m.get("wireguard_peer_receive_packets_total", &labels)?,
        ))
    };
    settled(read)?.with_context(|| format!("no packet counters for wg0's peer; journal:\n{}", journal()))
}

/// Waits until the service is active with a process other than `old` and serves wg0's peer.
fn serving(old: Option<u32>) -> Result<u32> {
    let t0 = Instant::now();
    loop {
        let pid = main_pid().unwrap_or(0);
        if pid != 0 && Some(pid) != old && systemctl_says("is-active")? == "active" && counts().is_ok() {
            return Ok(pid);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("wg-collector does not serve wg0's peer (MainPID {pid}, was {old:?}); journal:\n{}", journal());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn journal() -> String {
    cmd("journalctl", &["--unit", "wg-collector", "--no-pager", "--lines", "30"]).unwrap_or_else(|e| e.to_string())
}

fn ping(n: u32) -> Result<()> {
    cmd("ping", &["-c", &n.to_string(), "-i", "0.05", "-W", "2", "-q", PEER_ADDR]).map(drop)
}

/// The counts moved by exactly `n` pings each way from `before`.
fn expect(before: (f64, f64), n: u32, what: &str) -> Result<(f64, f64)> {
    let now = counts()?;
    let (tx, rx) = (now.0 - before.0, now.1 - before.1);
    ensure!((tx, rx) == (n as f64, n as f64), "{what}: {tx} sent and {rx} received counted for {n} pings");
    Ok(now)
}

fn installed() -> Result<()> {
    cmd("dpkg", &["--install", DEB])?;
    for f in [
        "/usr/bin/wg-collector",
        "/usr/lib/systemd/system/wg-collector.service",
        "/etc/default/wg-collector",
        "/usr/share/man/man1/wg-collector.1.gz",
        "/usr/share/bash-completion/completions/wg-collector",
    ] {
        ensure!(std::path::Path::new(f).exists(), "{f} missing after dpkg -i");
    }
    ensure!(systemctl_says("is-enabled")? == "disabled", "is-enabled: {}", systemctl_says("is-enabled")?);
    ensure!(systemctl_says("is-active")? == "inactive", "is-active: {}", systemctl_says("is-active")?);
    Ok(())
}

fn enabled() -> Result<()> {
    // The peer: a namespace behind a veth pair, its own kernel WireGuard device.
    cmd("ip", &["netns", "add", "peer"])?;
    cmd("ip", &["link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", "peer"])?;
    cmd("ip", &["addr", "add", "192.168.77.1/24", "dev", "veth0"])?;
    cmd("ip", &["link", "set", "veth0", "up"])?;
    let key = |name: &str| -> Result<String> {
        Ok(cmd("sh", &["-c", &format!("umask 077; wg genkey | tee /root/{name}.key | wg pubkey")])?.trim().to_string())
    };
    let (host_pub, peer_pub) = (key("host")?, key("peer")?);
    let host_priv = std::fs::read_to_string("/root/host.key")?;
    let in_peer = |args: &[&str]| cmd("ip", &[&["netns", "exec", "peer"], args].concat());
    in_peer(&["ip", "addr", "add", "192.168.77.2/24", "dev", "veth1"])?;
    in_peer(&["ip", "link", "set", "veth1", "up"])?;
    in_peer(&["ip", "link", "set", "lo", "up"])?;
    in_peer(&["ip", "link", "add", "wg1", "type", "wireguard"])?;
    in_peer(&["wg", "set", "wg1", "private-key", "/root/peer.key", "listen-port", "51821"])?;
    in_peer(&["wg", "set", "wg1", "peer", &host_pub, "allowed-ips", "10.77.0.1/32"])?;
    in_peer(&["ip", "addr", "add", "10.77.0.2/24", "dev", "wg1"])?;
    in_peer(&["ip", "link", "set", "wg1", "up"])?;
    // The gateway's side, as an operator writes it.
    std::fs::create_dir_all("/etc/wireguard")?;
    std::fs::write(
        "/etc/wireguard/wg0.conf",
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = 10.77.0.1/24\nListenPort = 51820\n\n\
             [Peer]\nPublicKey = {peer_pub}\nAllowedIPs = 10.77.0.2/32\nEndpoint = 192.168.77.2:51821\n",
            host_priv.trim()
        ),
    )?;
    cmd("wg-quick", &["up", "wg0"])?;
    PEER_KEY.set(peer_pub).ok();
    cmd("systemctl", &["enable", "--now", "wg-collector"])?;
    let pid = serving(None)?;
    ensure!(systemctl_says("is-enabled")? == "enabled");
    let listening = cmd("ss", &["--no-header", "--listening", "--tcp", "--numeric", "sport", "= :9586"])?;
    let local: Vec<&str> = listening.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
    ensure!(local == ["127.0.0.1:9586"], "as shipped it listens on {local:?}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("no CapEff")?;
    ensure!(u64::from_str_radix(eff.trim(), 16)? == CAPS, "effective capabilities {eff}, want {CAPS:016x}");
    let before = counts()?;
    ping(20)?;
    expect(before, 20, "through the shipped unit")?;
    Ok(())
}

fn reloaded() -> Result<()> {
    let pid = main_pid()?;
    let before = counts()?;
    cmd("systemctl", &["reload", "wg-collector"])?;
    ensure!(main_pid()? == pid && systemctl_says("is-active")? == "active", "reload replaced or stopped the process");
    wg_tests::lab::wait_until(Duration::from_secs(10), || journal().contains("web settings reloaded (SIGHUP)"))
        .with_context(|| format!("the collector never said it reloaded:\n{}", journal()))?;
    ping(10)?;
    expect(before, 10, "after the reload")?;
    Ok(())
}

fn watched() -> Result<()> {
    let show = |p: &str| cmd("systemctl", &["show", &format!("--property={p}"), "--value", "wg-collector"]);
    ensure!(show("Type")?.trim() == "notify" && show("WatchdogUSec")?.trim() == "30s", "the shipped unit");
    let status = show("StatusText")?;
    ensure!(status.trim() == "serving 127.0.0.1:9586: 1 WireGuard devices, 1 peers, 0 errors", "STATUS: {status}");
    // A hang, made with SIGSTOP, under a 4 s watchdog (a drop-in, for the test's sake):
    // systemd kills and restarts it, and the pinned maps keep the counts.
    let dropin = std::path::Path::new("/run/systemd/system/wg-collector.service.d");
    std::fs::create_dir_all(dropin)?;
    std::fs::write(dropin.join("watchdog.conf"), "[Service]\nWatchdogSec=4s\n")?;
    cmd("systemctl", &["daemon-reload"])?;
    cmd("systemctl", &["restart", "wg-collector"])?;
    let pid = serving(None)?;
    let before = counts()?;
    cmd("kill", &["-STOP", &pid.to_string()])?;
    let stopped = Instant::now();
    let restarted = serving(Some(pid))?;
    let took = stopped.elapsed();
    let log = journal();
    ensure!(log.contains("Watchdog timeout"), "restarted, but not by the watchdog:\n{log}");
    println!("boot-suite: the watchdog restarted the hung collector ({pid} → {restarted}) {took:.1?} after it stopped");
    ping(5)?;
    expect(before, 5, "after the watchdog's restart")?;
    std::fs::remove_dir_all(dropin)?;
    cmd("systemctl", &["daemon-reload"])?;
    cmd("systemctl", &["restart", "wg-collector"])?;
    serving(Some(restarted))?;
    Ok(())
}

fn stopped_and_restarted() -> Result<()> {
    let pid = main_pid()?;
    let before = counts()?;
    cmd("systemctl", &["stop", "wg-collector"])?;
    ensure!(systemctl_says("is-active")? == "inactive");
    ensure!(std::path::Path::new("/sys/fs/bpf/wg-collector/wg0").exists(), "no pins after the stop");
    ping(10)?;
    cmd("systemctl", &["start", "wg-collector"])?;
    let started = serving(Some(pid))?;
    let after = expect(before, 10, "10 pings while stopped, read after the start")?;
    cmd("systemctl", &["restart", "wg-collector"])?;
    serving(Some(started))?;
    expect(after, 0, "across the restart")?;
    Ok(())
}

fn upgraded() -> Result<()> {
    let pid = main_pid()?;
    let before = counts()?;
    cmd("dpkg", &["--install", DEB])?;
    serving(Some(pid))?;
    ensure!(systemctl_says("is-enabled")? == "enabled", "the upgrade changed is-enabled");
    ping(5)?;
    expect(before, 5, "after the upgrade")?;
    Ok(())
}

fn unpinned() -> Result<()> {
    let attached = || cmd("bpftool", &["net", "show", "dev", "wg0"]);
    let before = attached()?;
    ensure!(before.contains("wg_"), "bpftool shows none of our programs on wg0 while running:\n{before}");
    cmd("systemctl", &["stop", "wg-collector"])?;
    cmd("wg-collector", &["--bpf.unpin"])?;
    let after = attached()?;
    ensure!(!after.contains("wg_"), "still attached after --bpf.unpin:\n{after}");
    let left: Vec<_> = std::fs::read_dir("/sys/fs/bpf/wg-collector").map(|d| d.flatten().collect()).unwrap_or_default();
    ensure!(left.is_empty(), "pins left: {:?}", left.iter().map(|e| e.file_name()).collect::<Vec<_>>());
    Ok(())
}

fn purged() -> Result<()> {
    cmd("dpkg", &["--purge", "wg-collector"])?;
    for f in ["/usr/bin/wg-collector", "/usr/lib/systemd/system/wg-collector.service", "/etc/default/wg-collector"] {
        ensure!(!std::path::Path::new(f).exists(), "{f} left after dpkg --purge");
    }
    let unit = Command::new("systemctl").args(["cat", "wg-collector"]).output()?;
    ensure!(!unit.status.success(), "systemd still knows the unit");
    Ok(())
}
