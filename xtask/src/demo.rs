//! `cargo xtask lab` and `cargo xtask demo`: a lab the user can look at, torn down on
//! Ctrl-C.

use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use wg_tests::{lab::terminate, netns, Collector, Implementation, Lab};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set STOP instead of killing us, so the lab's Drop removes it all.
fn catch_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn wait(seconds: Option<u64>) {
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn describe(lab: &Lab) {
    for s in [&lab.a, &lab.b] {
        println!(
            "  side {}: namespace {}, interface {} ({} / {}), public key {}",
            s.name, s.ns, s.iface, s.tunnel_v4, s.tunnel_v6, s.public_key
        );
    }
    println!("  try: ip netns exec {} ping {}", lab.a.ns, lab.b.tunnel_v4);
    println!("       ip netns exec {} wg show", lab.a.ns);
}

pub fn lab(imp: Implementation) -> Result<()> {
    catch_signals();
    let lab = Lab::new(imp)?;
    println!("lab up ({}):", imp.label());
    describe(&lab);
    println!("Ctrl-C removes it.");
    wait(None);
    Ok(())
}

/// Background traffic through the tunnel: pings both ways, IPv4 and IPv6.
struct Traffic(Vec<Child>);

impl Traffic {
    fn start(lab: &Lab) -> Result<Self> {
        let mut kids = Vec::new();
        for (from, to) in [
            (&lab.a, lab.b.tunnel_v4.to_string()),
            (&lab.b, lab.a.tunnel_v4.to_string()),
            (&lab.a, lab.b.tunnel_v6.to_string()),
        ] {
            kids.push(
                netns::cmd(&from.ns, "ping")
                    .args(["-q", "-i", "0.2", &to])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(Self(kids))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for k in &mut self.0 {
            terminate(k);
        }
    }
}

pub fn run(imp: Implementation, seconds: Option<u64>, listen: SocketAddr) -> Result<()> {
    catch_signals();
    let lab = Lab::new(imp)?;
    let _traffic = Traffic::start(&lab)?;
    let collector = Collector::start(&lab.a.ns, &[])?;
    let addr = netns::forward(listen, &lab.a.ns, "127.0.0.1:9586".parse()?)?;
    // A few pings' worth, so the sample shows counts.
    std::thread::sleep(Duration::from_millis(1200));
    let m = collector.scrape()?;
    if m.get("wireguard_peer_transmit_packets_total", &[("device", &lab.a.iface)]).unwrap_or(0.0) < 1.0 {
        bail!("the demo's collector counted no packets:\n{}", m.text);
    }
    println!("demo up ({}): the collector watches side a's {}", imp.label(), lab.a.iface);
    describe(&lab);
    println!("\nmetrics: http://{addr}/metrics   (curl -s http://{addr}/metrics | grep wireguard_peer_)\n");
    for line in m.text.lines().filter(|l| l.starts_with("wireguard_peer_") || l.starts_with("wireguard_device_info")) {
        println!("  {line}");
    }
    println!("\n{}", if seconds.is_some() { "stopping soon" } else { "Ctrl-C tears it all down." });
    wait(seconds);
    println!("demo: removing the lab");
    Ok(())
}
