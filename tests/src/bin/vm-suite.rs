//! The kernel-WireGuard suite, run inside the qemu guest that `cargo xtask vmtest` boots
//! (this machine's kernel has no WireGuard module). The same lab as the host tests, with
//! kernel devices, and the same exact-count assertions; it ends by telling qemu its verdict
//! through the isa-debug-exit port.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wg_tests::{
    vm::{KERNEL, REFUSED},
    Collector, EmptyNamespace, Implementation, Lab, Metrics,
};

fn main() {
    if wg_tests::vm::kernel_before(5, 12) {
        REFUSED.run(&[("refused at start, in one line naming BPF_XCHG and Linux 5.12", refused)]);
    }
    KERNEL.run(&[
        ("netlink state: device, peer, handshake time", state_over_netlink),
        ("ping -c 100: exact packets, payload and WireGuard bytes", ping_counts),
        ("500+ peers over a multipart dump; added and removed", many_peers),
        ("latency, handshake and encap/decap samples", latency),
        ("a forced handshake counted exactly", forced_handshake),
        ("messages dropped, swapped and duplicated on the path counted exactly", path_impaired),
        ("a device deleted and created again", device_recreated),
        ("pinned: counting on while stopped, once after the restart; --bpf.unpin detaches", pinned_restart),
        ("--bpf.stats: runs and run time of each program", bpf_stats),
        ("--netns: both sides' devices from a third namespace, exact", other_namespaces),
        ("1,000 peers, peers changing for 30 s: every change counted once", churn),
    ])
}

/// Runs `f` with a collector in the lab's namespace a; a failure carries the collector's log.
fn with_collector(lab: &mut Lab, args: &[&str], f: impl FnOnce(&mut Lab, &Collector) -> Result<()>) -> Result<()> {
    let c = Collector::start(&lab.a.ns, args)?;
    f(lab, &c).map_err(|e| {
        let log = c.log_text();
        // The first warning about loading or attaching (else the first), whole: a verifier
        // log runs over many lines.
        let first = log.find("WARN wg_collector::refresh").or_else(|| log.find("WARN")).map(|i| {
            let rest = &log[i..];
            let end = rest[1..].find("WARN").map_or(rest.len(), |j| j + 1);
            let lines: Vec<&str> = rest[..end].lines().collect();
            let n = lines.len();
            if n > 40 {
                [&lines[..5], &["..."], &lines[n - 30..]].concat().join("\n")
            } else {
                lines.join("\n")
            }
        });
        e.context(format!("collector's first warning: {}", first.unwrap_or_default()))
    })
}

fn peer_of(lab: &Lab) -> [(&'static str, &str); 2] {
    [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())]
}

fn get(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    m.get(name, labels).with_context(|| format!("{name} {labels:?} missing:\n{}", m.text))
}

fn state_over_netlink() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        let m = c.scrape()?;
        let dev = [("device", lab.a.iface.as_str())];
        ensure!(
            m.get("wireguard_device_info", &[dev[0], ("implementation", "kernel"), ("listen_port", "51820")])
                == Some(1.0),
            "device_info:\n{}",
            m.text
        );
        ensure!(get(&m, "wireguard_peers", &dev)? == 1.0);
        let hs = get(&m, "wireguard_peer_last_handshake_seconds", &peer_of(lab))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        ensure!((now - hs).abs() < 60.0, "last handshake {hs}, now {now}");
        ensure!(
            m.get("wireguard_peer_info", &[peer_of(lab)[1], ("endpoint", "10.200.0.2:51820")]) == Some(1.0),
            "{}",
            m.text
        );
        ensure!(get(&m, "wireguard_collector_errors_total", &[("source", "netlink")])? == 0.0);
        Ok(())
    })
}

fn ping_counts() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        let peer = peer_of(lab);
        let read = |m: &Metrics| -> Result<[f64; 6]> {
            Ok([
                get(m, "wireguard_peer_transmit_packets_total", &peer)?,
                get(m, "wireguard_peer_receive_packets_total", &peer)?,
                get(m, "wireguard_peer_transmit_payload_bytes_total", &peer)?,
                get(m, "wireguard_peer_receive_payload_bytes_total", &peer)?,
                get(m, "wireguard_peer_transmit_bytes_total", &peer)?,
                get(m, "wireguard_peer_receive_bytes_total", &peer)?,
            ])
        };
        let before = read(&c.scrape()?)?;
        lab.exec('a', "ping", &["-c", "100", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()])?;
        let after = read(&c.scrape()?)?;
        let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        println!(
            "vm-suite: ping deltas tx {} rx {} payload {} / {} wireguard bytes {} / {}",
            d[0], d[1], d[2], d[3], d[4], d[5]
        );
        ensure!(d[0] == 100.0 && d[1] == 100.0, "packets {d:?}");
        ensure!(d[2] == 8400.0 && d[3] == 8400.0, "payload {d:?}");
        // Kernel WireGuard counts each data message as it goes on the wire: 16 + pad16(84) + 16
        // = 128 bytes per ping, and keepalives (32) if any fell in the window.
        for (what, got) in [("tx", d[4]), ("rx", d[5])] {
            let extra = got - 100.0 * 128.0;
            ensure!(
                extra >= 0.0 && extra % 32.0 == 0.0 && extra <= 64.0,
                "{what}: kernel WireGuard counted {got} bytes for 100 pings"
            );
        }
        Ok(())
    })
}

fn many_peers() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        // 600 peers in one `wg setconf`-like batch through a config file: the dump spans several
        // netlink messages (~90 peers each).
        let mut conf = String::new();
        let mut keys = Vec::new();
        for i in 0..600u32 {
            let k = wg_tests::lab::random_public_key();
            conf.push_str(&format!(
                "[Peer]\nPublicKey = {k}\nAllowedIPs = 10.{}.{}.{}/32\n\n",
                100 + i / 65536,
                (i / 256) % 256,
                i % 256
            ));
            keys.push(k);
        }
        let path = std::env::temp_dir().join(format!("{}-peers.conf", lab.a.ns));
        std::fs::write(&path, conf)?;
        lab.wg('a', &["addconf", "{iface}", path.to_str().unwrap()])?;
        let dev = [("device", lab.a.iface.as_str())];
        let (m, _) = c.wait_for(Duration::from_secs(20), |m| m.get("wireguard_peers", &dev) == Some(601.0))?;
        ensure!(get(&m, "wireguard_peers_added_total", &dev)? == 600.0);
        ensure!(
            m.find("wireguard_peer_allowed_ips_info", &[dev[0]]).count() == 602,
            "allowed IPs: {}",
            m.find("wireguard_peer_allowed_ips_info", &[dev[0]]).count()
        );
        // One `wg set` removing 100 peers.
        let mut args = vec!["set", "{iface}"];
        for k in keys.iter().take(100) {
            args.extend(["peer", k.as_str(), "remove"]);
        }
        lab.wg('a', &args)?;
        let (m, _) = c.wait_for(Duration::from_secs(20), |m| m.get("wireguard_peers", &dev) == Some(501.0))?;
        ensure!(get(&m, "wireguard_peers_removed_total", &dev)? == 100.0);
        ensure!(!m.mentions("public_key", &keys[0]) && m.mentions("public_key", &keys[599]));
        std::fs::remove_file(&path)?;
        Ok(())
    })
}

fn latency() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        let peer = peer_of(lab);
        lab.reset_peer('a')?;
        c.scrape()?;
        lab.exec('a', "ping", &["-c", "40", "-i", "0.02", "-q", &lab.b.tunnel_v4.to_string()])?;
        let m = c.scrape()?;
        let icmp = get(&m, "wireguard_peer_latency_seconds_count", &[peer[0], peer[1], ("method", "icmp")])?;
        let hs = get(&m, "wireguard_peer_handshake_rtt_seconds_count", &[peer[0], peer[1], ("role", "initiator")])?;
        let tx = get(&m, "wireguard_peer_transmit_packets_total", &peer)?;
        let rx = get(&m, "wireguard_peer_receive_packets_total", &peer)?;
        let encap = get(&m, "wireguard_peer_encap_delay_seconds_count", &peer)?;
        let decap = get(&m, "wireguard_peer_decap_delay_seconds_count", &peer)?;
        println!("vm-suite: icmp samples {icmp}, handshakes {hs}, encap {encap} / tx {tx}, decap {decap} / rx {rx}");
        ensure!(icmp == 40.0 && hs == 1.0, "icmp {icmp}, initiator handshakes {hs}");
        ensure!(encap == tx && decap == rx, "encap {encap} vs tx {tx}, decap {decap} vs rx {rx}");
        Ok(())
    })
}

fn forced_handshake() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        let (dev, key) = (lab.a.iface.as_str(), lab.b.public_key.as_str());
        let msg = |m: &Metrics, dir: &str, t: &str| {
            m.get_or_zero(
                "wireguard_messages_total",
                &[("device", dev), ("public_key", key), ("direction", dir), ("type", t)],
            )
        };
        let before = c.scrape()?;
        lab.reset_peer('a')?;
        c.scrape()?;
        lab.exec('a', "ping", &["-c", "1", "-W", "2", &lab.b.tunnel_v4.to_string()])?;
        let m = c.scrape()?;
        let d = |dir, t| msg(&m, dir, t) - msg(&before, dir, t);
        ensure!(
            d("transmit", "handshake_initiation") == 1.0 && d("receive", "handshake_response") == 1.0,
            "{}",
            m.text
        );
        ensure!(
            d("transmit", "data") == 1.0 && d("receive", "data") == 1.0,
            "data {} / {}",
            d("transmit", "data"),
            d("receive", "data")
        );
        Ok(())
    })
}

/// The relay drops every 5th of b's transport messages to a, then (a second lab) swaps every
/// 4th and duplicates every 9th, over two sessions, the last settled (tests/src/impair.rs):
/// a's collector counts exactly what the relay did.
fn path_impaired() -> Result<()> {
    use wg_tests::impair::{over_two_sessions, Impairment};
    let drop = Impairment { drop_every: 5, ..Default::default() };
    let shuffle = Impairment { swap_every: 4, duplicate_every: 9, ..Default::default() };
    for how in [drop, shuffle] {
        let mut lab = Lab::with_delay(Implementation::Kernel, Duration::from_millis(1))?;
        with_collector(&mut lab, &[], |lab, c| {
            let o = over_two_sessions(lab, c, how, 100)?;
            println!("vm-suite: path {o:?}");
            let want = [o.done.dropped, o.done.swapped, o.done.duplicated].map(|n| n as f64);
            ensure!(o.counted == want && want.iter().sum::<f64>() >= 30.0, "{o:?}");
            Ok(())
        })?;
    }
    Ok(())
}

fn device_recreated() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        let key = lab.b.public_key.clone();
        let dev = lab.a.iface.clone();
        lab.stop_daemon('a')?;
        c.wait_for(Duration::from_secs(10), |m| m.get("wireguard_device_info", &[("device", dev.as_str())]).is_none())?;
        lab.start_daemon('a')?;
        lab.wait_tunnel()?;
        let labels = [("device", dev.as_str()), ("public_key", key.as_str())];
        let (m, _) =
            c.wait_for(Duration::from_secs(10), |m| m.get("wireguard_peer_transmit_packets_total", &labels).is_some())?;
        let tx0 = get(&m, "wireguard_peer_transmit_packets_total", &labels)?;
        lab.exec('a', "ping", &["-c", "20", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()])?;
        let m = c.scrape()?;
        ensure!(get(&m, "wireguard_peer_transmit_packets_total", &labels)? - tx0 == 20.0);
        Ok(())
    })
}

/// A kernel without the atomic instructions: the collector exits at once with one line that
/// names them and the first Linux that has them, and no verifier output.
fn refused() -> Result<()> {
    let bin = wg_tests::collector::binary()?;
    let out = std::process::Command::new("timeout").arg("20").arg(&bin).args(["--bpf.no-pin"]).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("vm-refusal: exit {:?}, stderr:\n{stderr}", out.status.code());
    ensure!(out.status.code() == Some(1), "exit status {:?}, want 1 (124: still running)", out.status.code());
    // main() prints a fatal error as "wg-collector: ..." (tracing's lines carry a time stamp).
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("wg-collector: ")).collect();
    ensure!(errors.len() == 1, "want one error line: {errors:?}");
    ensure!(errors[0].contains("BPF_XCHG") && errors[0].contains("needs Linux 5.12 or later"), "{}", errors[0]);
    ensure!(!stderr.contains("erifier"), "a verifier dump");
    Ok(())
}

/// Pinned maps keep the counts across a restart, and the programs count on while the
/// collector is down: TCX links (6.6+) because they are pinned, clsact filters (before)
/// because netlink filters outlive the process. After the restart each packet is counted
/// once; `--bpf.unpin` then leaves no program of ours on the device. Prints the kernel's
/// cells for the README's table.
fn pinned_restart() -> Result<()> {
    let lab = Lab::new(Implementation::Kernel)?;
    let mut c = Collector::start(&lab.a.ns, &[])?;
    let peer = peer_of(&lab);
    let tx = |c: &Collector| -> Result<f64> { get(&c.scrape()?, "wireguard_peer_transmit_packets_total", &peer) };
    let ping = |n: &str| lab.exec('a', "ping", &["-c", n, "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()]);
    let t0 = tx(&c)?;
    ping("10")?;
    c.stop();
    ping("10")?;
    c.restart()?;
    let down = tx(&c)? - t0;
    ping("10")?;
    let after = tx(&c)? - t0;
    let tcx = !wg_tests::vm::kernel_before(6, 6);
    println!("vm-suite: feature attach: {}", if tcx { "TCX" } else { "clsact" });
    println!("vm-suite: feature pinning: {}", if down == 20.0 { "counts, and counting while down" } else { "counts" });
    ensure!(down == 20.0, "{down} counted for 10 pings before the stop and 10 while down");
    ensure!(after == 30.0, "{after} counted for 30 pings: a program attached twice after the restart?");
    c.stop();
    let pins = c.pin_path().context("no pins")?.display().to_string();
    let bin = wg_tests::collector::binary()?;
    wg_tests::netns::run(wg_tests::netns::cmd(&lab.a.ns, bin.to_str().unwrap()).args([
        "--bpf.unpin",
        "--bpf.pin-path",
        &pins,
    ]))?;
    for dir in ["ingress", "egress"] {
        let filters = lab.exec('a', "/usr/sbin/tc", &["filter", "show", "dev", &lab.a.iface, dir])?;
        ensure!(!filters.contains("wg_"), "after --bpf.unpin, {dir} still has:\n{filters}");
    }
    ping("10")?;
    Ok(())
}

fn bpf_stats() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &["--bpf.stats"], |lab, c| {
        lab.exec('a', "ping", &["-c", "10", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()])?;
        let m = c.scrape()?;
        let dev = lab.a.iface.as_str();
        for program in ["wg_plain_ingress", "wg_plain_egress"] {
            let l = [("device", dev), ("program", program)];
            let runs = get(&m, "wireguard_collector_bpf_runs_total", &l)?;
            let time = get(&m, "wireguard_collector_bpf_run_time_seconds_total", &l)?;
            ensure!(runs >= 10.0 && time > 0.0, "{program}: {runs} runs, {time} s");
        }
        println!("vm-suite: feature bpf stats: yes");
        Ok(())
    })
}

/// A collector in an empty namespace reads both lab sides' kernel devices through --netns:
/// WireGuard's generic netlink socket opened in each, the programs attached there.
fn other_namespaces() -> Result<()> {
    let lab = Lab::new(Implementation::Kernel)?;
    let home = EmptyNamespace::new()?;
    let c = Collector::start(&home.name, &["--netns", &lab.a.ns, "--netns", &lab.b.ns])?;
    let sides = [(&lab.a, &lab.b), (&lab.b, &lab.a)];
    let peer = |me: &wg_tests::Side, other: &wg_tests::Side| -> [(&'static str, String); 3] {
        [("device", me.iface.clone()), ("netns", me.ns.clone()), ("public_key", other.public_key.clone())]
    };
    let read = |m: &Metrics| -> Result<Vec<f64>> {
        let mut v = Vec::new();
        for (me, other) in sides {
            let p = peer(me, other);
            let l: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
            v.push(get(m, "wireguard_peer_transmit_packets_total", &l)?);
            v.push(get(m, "wireguard_peer_receive_packets_total", &l)?);
            ensure!(get(m, "wireguard_peer_last_handshake_seconds", &l)? > 0.0, "no handshake read for {}", me.ns);
        }
        Ok(v)
    };
    let (m, _) = c.wait_for(Duration::from_secs(10), |m| read(m).is_ok())?;
    ensure!(m.find("wireguard_device_info", &[("implementation", "kernel")]).count() == 2, "{}", m.text);
    let before = read(&m)?;
    lab.exec('a', "ping", &["-c", "50", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()])?;
    let after = read(&c.scrape()?)?;
    let d: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("vm-suite: --netns deltas a tx {} rx {}, b tx {} rx {}", d[0], d[1], d[2], d[3]);
    ensure!(d == [50.0, 50.0, 50.0, 50.0], "{d:?}");
    Ok(())
}

/// 1,000 peers; then for 30 s, five times a second, one `wg set` adds 20 new peers and
/// removes the 20 added a second earlier (200 changes a second, as far as the guest keeps up), while ping runs across the tunnel and the collector polls
/// and is scraped every 200 ms. Dumps that run into a change are flagged interrupted by the
/// kernel and read again: peers_added_total and peers_removed_total then equal the changes
/// made, and no counter of the pinging peer ever falls.
fn churn() -> Result<()> {
    let mut lab = Lab::new(Implementation::Kernel)?;
    with_collector(&mut lab, &[], |lab, c| {
        let dev = [("device", lab.a.iface.as_str())];
        let mut conf = String::new();
        for i in 0..999u32 {
            let k = wg_tests::lab::random_public_key();
            conf.push_str(&format!("[Peer]\nPublicKey = {k}\nAllowedIPs = 10.100.{}.{}/32\n\n", i / 256, i % 256));
        }
        let path = std::env::temp_dir().join(format!("{}-churn.conf", lab.a.ns));
        std::fs::write(&path, conf)?;
        lab.wg('a', &["addconf", "{iface}", path.to_str().unwrap()])?;
        std::fs::remove_file(&path)?;
        let (m, _) = c.wait_for(Duration::from_secs(30), |m| m.get("wireguard_peers", &dev) == Some(1000.0))?;
        let (added0, removed0) =
            (get(&m, "wireguard_peers_added_total", &dev)?, get(&m, "wireguard_peers_removed_total", &dev)?);
        let retries0 = get(&m, "wireguard_collector_netlink_dump_retries_total", &[])?;

        let peer = peer_of(lab);
        let watched = ["wireguard_peer_transmit_packets_total", "wireguard_peer_receive_bytes_total"];
        let mut ping = wg_tests::netns::cmd(&lab.a.ns, "ping")
            .args(["-i", "0.05", "-q", &lab.b.tunnel_v4.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let (adds, removes, batches) = std::thread::scope(|s| -> Result<(u32, u32, u32)> {
            let churner = s.spawn(|| -> Result<(u32, u32, u32)> {
                let start = std::time::Instant::now();
                let mut batches: Vec<Vec<String>> = Vec::new();
                let (mut adds, mut removes, mut n) = (0u32, 0u32, 0u32);
                while start.elapsed() < Duration::from_secs(30) {
                    let fresh: Vec<String> = (0..20).map(|_| wg_tests::lab::random_public_key()).collect();
                    let mut args: Vec<String> = vec!["set".into(), "{iface}".into()];
                    for k in &fresh {
                        args.extend(["peer".into(), k.clone(), "allowed-ips".into()]);
                        args.push(format!("10.150.{}.{}/32", n / 256 % 256, n % 256));
                        n += 1;
                    }
                    if batches.len() >= 5 {
                        for k in batches.remove(0) {
                            args.extend(["peer".into(), k, "remove".into()]);
                            removes += 1;
                        }
                    }
                    let a: Vec<&str> = args.iter().map(String::as_str).collect();
                    lab.wg('a', &a)?;
                    adds += 20;
                    batches.push(fresh);
                    // Five a second, if the guest keeps up (the count is what was done).
                    let next = start + Duration::from_millis(200) * (n / 20);
                    std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
                }
                Ok((adds, removes, n / 20))
            });
            let mut last = [0.0; 2];
            while !churner.is_finished() {
                let m = c.scrape()?;
                for (i, name) in watched.iter().enumerate() {
                    let v = get(&m, name, &peer)?;
                    ensure!(v >= last[i], "{name} fell from {} to {v}", last[i]);
                    last[i] = v;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            churner.join().map_err(|_| anyhow::anyhow!("the churn thread panicked"))?
        })?;
        let _ = ping.kill();
        let _ = ping.wait();
        let want = 1000.0 + f64::from(adds) - f64::from(removes);
        let (m, _) = c.wait_for(Duration::from_secs(20), |m| m.get("wireguard_peers", &dev) == Some(want))?;
        let added = get(&m, "wireguard_peers_added_total", &dev)? - added0;
        let removed = get(&m, "wireguard_peers_removed_total", &dev)? - removed0;
        let retries = get(&m, "wireguard_collector_netlink_dump_retries_total", &[])? - retries0;
        println!(
            "vm-suite: churn: {batches} wg set in 30 s, {adds} peers added and {removes} removed ({:.0} changes a second); the collector counted {added} added, {removed} removed; {retries} interrupted dumps read again",
            f64::from(adds + removes) / 30.0
        );
        ensure!(added == f64::from(adds) && removed == f64::from(removes), "added {added}, removed {removed}");
        Ok(())
    })
}
