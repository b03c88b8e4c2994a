//! A busy gateway's weather, at CI scale: peers changing 100 times a second under 1 s
//! Prometheus scrapes, junk at the WireGuard port at full speed, and a crowd of scrapers.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use wg_tests::{
    lab::{key_hex, random_bytes, random_public_key, settled},
    netns,
    prometheus::Prometheus,
    Collector, Implementation, Lab, Metrics,
};

/// The collector's poll interval in the tests (Collector::start passes it).
const POLL: Duration = Duration::from_millis(200);

fn prometheus_scraping(lab: &Lab, dir_name: &str) -> (Prometheus, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{dir_name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wireguard\n    static_configs: [{ targets: ['127.0.0.1:9586'] }]\n",
    )
    .unwrap();
    (Prometheus::start(&lab.a.ns, dir.join("prometheus.yml").to_str().unwrap(), &dir.join("data")), dir)
}

/// When a peer's add and remove were sent and applied.
#[derive(Default)]
struct Life {
    added: Option<(Instant, Instant)>,
    removed: Option<(Instant, Instant)>,
}

#[test]
fn churn_of_100_changes_a_second_under_1s_scrapes_loses_nothing() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = lab.a.iface.clone();
    let (prom, dir) = prometheus_scraping(&lab, "wg-churn");
    // Its first scrape comes up to a few seconds after it starts.
    wg_tests::lab::wait_until(Duration::from_secs(15), || prom.query("up{job=\"wireguard\"}") == Some(1.0)).unwrap();

    // Our own scraper, every 50 ms: when each scrape started and which peers it showed.
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (stop, ns, dev) = (stop.clone(), lab.a.ns.clone(), dev.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let page =
                    netns::within(&ns, || wg_tests::scrape::http_get("127.0.0.1:9586".parse().unwrap(), "/metrics"));
                match page.and_then(|p| Metrics::parse(&p)) {
                    Ok(m) => {
                        let keys: HashSet<String> = m
                            .find("wireguard_peer_info", &[("device", dev.as_str())])
                            .filter_map(|s| s.labels.iter().find(|(k, _)| k == "public_key").map(|(_, v)| v.clone()))
                            .collect();
                        seen.push((t0, Instant::now(), keys));
                    }
                    Err(e) => failed.push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (seen, failed)
        })
    };

    // 100 changes a second for 10 s: add a peer, remove the oldest, alternately, around 100 peers.
    let mut lives: HashMap<String, Life> = HashMap::new();
    let mut live: VecDeque<String> = VecDeque::new();
    let add = |lives: &mut HashMap<String, Life>, live: &mut VecDeque<String>, n: u32| {
        let key = random_public_key();
        let t = Instant::now();
        lab.uapi_set(
            'a',
            &format!(
                "public_key={}\nallowed_ip=10.{}.{}.{}/32\n",
                key_hex(&key),
                100 + n / 65536 % 100,
                n / 256 % 256,
                n % 256
            ),
        )
        .unwrap();
        lives.entry(key.clone()).or_default().added = Some((t, Instant::now()));
        live.push_back(key);
    };
    for n in 0..100 {
        add(&mut lives, &mut live, n);
    }
    let start = Instant::now();
    let mut changes = 0u32;
    while start.elapsed() < Duration::from_secs(10) {
        // Paced: change number i is due at i × 10 ms.
        let due = start + Duration::from_millis(10 * changes as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if changes.is_multiple_of(2) {
            add(&mut lives, &mut live, 100 + changes);
        } else {
            let key = live.pop_front().unwrap();
            let t = Instant::now();
            lab.uapi_set('a', &format!("public_key={}\nremove=true\n", key_hex(&key))).unwrap();
            lives.get_mut(&key).unwrap().removed = Some((t, Instant::now()));
        }
        changes += 1;
    }
    let rate = changes as f64 / start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let (seen, failed) = checker.join().unwrap();

    assert!(failed.is_empty(), "scrapes failed: {failed:?}");
    assert!(rate >= 95.0, "only {rate:.1} changes/s");
    let mut late_adds = 0;
    for (t0, t1, keys) in &seen {
        for (key, life) in &lives {
            let present = keys.contains(key);
            if let Some((_, done)) = life.removed {
                assert!(!(done < *t0 && present), "a peer removed before a scrape started is on its page");
            }
            let (_, added) = life.added.unwrap();
            let removing = life.removed.is_some_and(|(sent, _)| sent < *t1);
            if added + POLL < *t0 && !removing && !present {
                late_adds += 1;
            }
        }
    }
    assert_eq!(late_adds, 0, "peers missing from a scrape more than one poll interval after they were added");
    assert!(seen.len() >= 100, "only {} scrapes", seen.len());

    // Prometheus scraped every second, never failing.
    let ups = prom.query("count_over_time(up{job=\"wireguard\"}[11s])").unwrap();
    let good = prom.query("sum_over_time(up{job=\"wireguard\"}[11s])").unwrap();
    assert!(ups >= 10.0, "{ups} scrapes in the 11.5 s of churn");
    assert_eq!(good, ups, "failed Prometheus scrapes");
    assert!(c.log_text().matches("ERROR").count() == 0, "{}", c.log_text());
    println!(
        "churn: {changes} changes at {rate:.1}/s, {} checked scrapes, {ups} Prometheus scrapes, 0 failed",
        seen.len()
    );
    drop(prom);
    let _ = std::fs::remove_dir_all(dir);
}

/// Datagrams for a WireGuard port that are no message: random bytes, truncated messages,
/// messages of a known type but the wrong size, oversized ones (up to the underlay's MTU:
/// fragments would be counted per fragment, the UDP layer per datagram).
fn junk(rng: &mut u64) -> Vec<u8> {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let kind = next() % 4;
    let len = match kind {
        0 => (next() % 1473) as usize,
        1 => (next() % 4) as usize,
        2 => [147, 149, 91, 93, 63, 65, 31][(next() % 7) as usize],
        _ => 1400 + (next() % 73) as usize,
    };
    let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    if kind >= 2 && !d.is_empty() {
        d[0] = 1 + (next() % 4) as u8;
        let end = d.len().min(4);
        d[1..end].fill(0);
    }
    d
}

#[test]
fn junk_at_full_speed_is_counted_and_the_tunnel_counts_stay_exact() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.b.ns, &[]).unwrap();
    let dev = lab.b.iface.clone();
    // The kernel's own packet counts of the WireGuard interface (its namespace's /sys).
    let stat = |f: &str| -> f64 {
        let v = netns::run(netns::cmd(&lab.b.ns, "cat").arg(format!("/sys/class/net/{dev}/statistics/{f}"))).unwrap();
        v.trim().parse().unwrap()
    };
    let udp = || lab.snmp('b', "Udp", "InDatagrams").unwrap() as f64 + lab.snmp('b', "Udp", "InErrors").unwrap() as f64;
    // Everything our underlay program saw arrive at the port: invalid, and messages (the
    // device's own and its peer's).
    let seen = |m: &Metrics| -> f64 {
        m.find("wireguard_invalid_messages_total", &[("device", dev.as_str())]).map(|s| s.value).sum::<f64>()
            + m.find("wireguard_messages_total", &[("device", dev.as_str()), ("direction", "receive")])
                .map(|s| s.value)
                .sum::<f64>()
    };
    let plain = |m: &Metrics, d: &str| -> f64 {
        m.find(&format!("wireguard_peer_{d}_packets_total"), &[("device", dev.as_str())]).map(|s| s.value).sum::<f64>()
            + m.find("wireguard_unattributed_packets_total", &[("device", dev.as_str()), ("direction", d)])
                .map(|s| s.value)
                .sum::<f64>()
    };
    let _load = wg_tests::lab::exclusive();
    let (udp0, rx0, tx0) = settled(|| (udp(), stat("rx_packets"), stat("tx_packets"))).unwrap();
    let before = c.scrape().unwrap();

    // Full speed from a for 3 s, while a pings through the tunnel (ping may lose some to the
    // flood; what counts is that our counts match the kernel's).
    let target: SocketAddr = format!("{}:51820", lab.b.underlay).parse().unwrap();
    let ns = lab.a.ns.clone();
    let peer = lab.b.tunnel_v4.to_string();
    let pinger =
        std::thread::spawn(move || netns::run(netns::cmd(&ns, "ping").args(["-c", "200", "-i", "0.01", "-q", &peer])));
    let sent = netns::within(&lab.a.ns, move || {
        let s = UdpSocket::bind("10.200.0.1:40002")?;
        let mut rng = u64::from_le_bytes(random_bytes::<8>()) | 1;
        let (t0, mut n) = (Instant::now(), 0u64);
        while t0.elapsed() < Duration::from_secs(3) {
            for _ in 0..256 {
                if s.send_to(&junk(&mut rng), target).is_ok() {
                    n += 1;
                }
            }
        }
        Ok((n, t0.elapsed().as_secs_f64()))
    });
    let (sent, secs) = sent.unwrap();
    let _ = pinger.join();
    // Until the queues have drained: the kernel's counters and ours read together, at rest
    // (the same twice in a row), so a straggler cannot land between the two sides.
    let mut m = c.scrape().unwrap();
    let (udp1, rx1, tx1) = settled(|| {
        m = c.scrape().unwrap();
        let ours = (seen(&m), plain(&m, "receive"), plain(&m, "transmit"));
        (ours, (udp(), stat("rx_packets"), stat("tx_packets")))
    })
    .unwrap()
    .1;
    assert!(c.log_text().matches("ERROR").count() == 0);

    // What reached the port, datagram for datagram, is what the UDP layer took in.
    let counted = seen(&m) - seen(&before);
    let arrived = udp1 - udp0;
    println!(
        "junk: {sent} datagrams sent in {secs:.1} s ({:.0}/s); {arrived} reached b's UDP layer, {counted} counted",
        sent as f64 / secs
    );
    assert_eq!(counted, arrived, "{}", m.text);
    assert!(counted >= 1000.0 && counted <= sent as f64 + 1000.0);
    // The tunnel's counts: exactly what the kernel counted on the WireGuard interface.
    assert_eq!(plain(&m, "receive") - plain(&before, "receive"), rx1 - rx0, "{}", m.text);
    assert_eq!(plain(&m, "transmit") - plain(&before, "transmit"), tx1 - tx0, "{}", m.text);
    // And it still works.
    lab.exec('a', "ping", &["-c", "3", "-i", "0.05", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
}

/// `wrk` with 200 connections on /metrics: no errors, and a peer added meanwhile still reaches
/// the maps within a poll interval or two (the scrape crowd does not hold up the map sync).
#[test]
fn a_crowd_of_scrapers_gets_no_errors_and_does_not_hold_up_the_sync() {
    let _load = wg_tests::lab::exclusive();
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let body: String = (0..200)
        .map(|i| {
            format!("public_key={}\nallowed_ip=10.150.{}.{}/32\n", key_hex(&random_public_key()), i / 256, i % 256)
        })
        .collect();
    lab.uapi_set('a', &body).unwrap();
    let wrk = netns::cmd(&lab.a.ns, "wrk")
        .args(["-t", "2", "-c", "200", "-d", "5s", "--latency", "--timeout", "5s", "http://127.0.0.1:9586/metrics"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("wrk (cargo xtask setup installs it)");
    std::thread::sleep(Duration::from_secs(1));
    // Under the crowd, the map sync goes on: a new peer's allowed IP is in the pinned host
    // map (read with bpftool, not through the busy endpoint) within a second.
    let key = random_public_key();
    let in_map = || c.host_in_maps(&lab.a.iface, "10.151.0.1".parse().unwrap());
    assert!(!in_map());
    lab.uapi_set('a', &format!("public_key={}\nallowed_ip=10.151.0.1/32\n", key_hex(&key))).unwrap();
    let t = Instant::now();
    wg_tests::lab::wait_until(Duration::from_secs(5), in_map).unwrap();
    let synced = t.elapsed();
    let out = String::from_utf8(wrk.wait_with_output().unwrap().stdout).unwrap();
    println!("{out}\nnew peer in the maps after {synced:?}");
    assert!(synced < Duration::from_secs(1), "{synced:?}");
    assert!(!out.contains("Socket errors"), "{out}");
    assert!(!out.contains("Non-2xx"), "{out}");
    // 200 connections from one address are within the default caps: none refused.
    let m = c.scrape().unwrap();
    let refused: f64 = m.find("wireguard_collector_http_connections_refused_total", &[]).map(|s| s.value).sum();
    assert_eq!(refused, 0.0, "{}", m.text);
    let requests: f64 = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(requests >= 200.0, "{out}");
}
