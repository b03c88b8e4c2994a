//! Protocol counters and the peer lifecycle against real WireGuard: handshakes, keepalives,
//! cookie replies under load, junk at the port, roaming, peers coming and going, pools,
//! names.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use blake2::{
    digest::{consts::U16, Mac},
    Blake2s256, Blake2sMac, Digest,
};
use wg_tests::{
    lab::{settled, wait_until},
    netns, Collector, Implementation, Lab, Metrics,
};

const MSG: &str = "wireguard_messages_total";

fn msg(m: &Metrics, dev: &str, key: &str, dir: &str, t: &str) -> f64 {
    m.get_or_zero(MSG, &[("device", dev), ("public_key", key), ("direction", dir), ("type", t)])
}

#[test]
fn a_forced_handshake_is_counted_exactly() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let (dev, key) = (lab.a.iface.as_str(), lab.b.public_key.as_str());
    let before = c.scrape().unwrap();
    lab.reset_peer('a').unwrap();
    // A scrape syncs the maps, so the re-added peer's endpoint is known before it shakes hands.
    c.scrape().unwrap();
    lab.exec('a', "ping", &["-c", "1", "-W", "2", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.scrape().unwrap();
    let d = |dir, t| msg(&m, dev, key, dir, t) - msg(&before, dev, key, dir, t);
    assert_eq!(d("transmit", "handshake_initiation"), 1.0, "{}", m.text);
    assert_eq!(d("receive", "handshake_response"), 1.0);
    assert_eq!(d("transmit", "data"), 1.0);
    assert_eq!(d("receive", "data"), 1.0);
    assert_eq!(d("receive", "handshake_initiation") + d("transmit", "handshake_response"), 0.0);
    assert_eq!(m.get("wireguard_peers_active", &[("device", dev)]), Some(1.0));
}

#[test]
fn persistent_keepalives_are_counted_over_time() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let (dev, key) = (lab.a.iface.as_str(), lab.b.public_key.as_str());
    lab.wg('a', &["set", "{iface}", "peer", key, "persistent-keepalive", "1"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (before, t0) = (c.scrape().unwrap(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (m, elapsed) = (c.scrape().unwrap(), t0.elapsed().as_secs_f64());
    let n = msg(&m, dev, key, "transmit", "keepalive") - msg(&before, dev, key, "transmit", "keepalive");
    assert!((n - elapsed).abs() <= 1.0, "{n} keepalives in {elapsed:.2} s");
}

/// An initiation with a valid mac1 for `responder` (so WireGuard queues it for the expensive
/// part), the rest random: it will never complete.
fn initiation(responder: &[u8; 32], n: u32) -> Vec<u8> {
    let mut m = vec![0u8; 148];
    m[0] = 1;
    m[4..8].copy_from_slice(&n.to_le_bytes());
    for (i, b) in m[8..116].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761).wrapping_add(n) as u8;
    }
    let key = Blake2s256::new().chain_update(b"mac1----").chain_update(responder).finalize();
    let mut mac = <Blake2sMac<U16> as Mac>::new_from_slice(&key).unwrap();
    mac.update(&m[..116]);
    m[116..132].copy_from_slice(&mac.finalize().into_bytes());
    m
}

#[test]
fn cookie_replies_under_load_are_counted() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    // The collector watches b, the one under load.
    let c = Collector::start(&lab.b.ns, &[]).unwrap();
    let dev = lab.b.iface.as_str();
    let responder: [u8; 32] = base64_key(&lab.b.public_key);
    let target: SocketAddr = format!("{}:51820", lab.b.underlay).parse().unwrap();
    let sock = netns::within(&lab.a.ns, move || Ok(UdpSocket::bind(format!("{}:40000", "10.200.0.1"))?)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let _load = wg_tests::lab::exclusive();
    let before = c.scrape().unwrap();
    // What b's kernel sent: UDP datagrams out of b's namespace. The tunnel is idle, so during
    // the flood they are the cookie replies (sent one per datagram, no GSO).
    let out0 = settled(|| lab.snmp('b', "Udp", "OutDatagrams").unwrap()).unwrap();

    // Read cookie replies while flooding.
    let (stop, cookies) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (sock, stop, cookies) = (sock.try_clone().unwrap(), stop.clone(), cookies.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    if n == 64 && buf[0] == 3 {
                        cookies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut sent = 0u32;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(700) {
        for _ in 0..200 {
            let _ = sock.send_to(&initiation(&responder, sent), target);
            sent += 1;
        }
    }
    // Until b has answered what is still queued, and the answers are in.
    let sent_by_b = (settled(|| lab.snmp('b', "Udp", "OutDatagrams").unwrap()).unwrap() - out0) as f64;
    settled(|| cookies.load(Ordering::Relaxed)).unwrap();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let got = cookies.load(Ordering::Relaxed) as f64;
    let mut m = c.scrape().unwrap();
    settled(|| {
        m = c.scrape().unwrap();
        msg(&m, dev, "", "transmit", "cookie_reply")
    })
    .unwrap();
    let counted = msg(&m, dev, "", "transmit", "cookie_reply") - msg(&before, dev, "", "transmit", "cookie_reply");
    let initiations =
        msg(&m, dev, "", "receive", "handshake_initiation") - msg(&before, dev, "", "receive", "handshake_initiation");
    println!("sent {sent} initiations; b saw {initiations}, counted {counted} cookie replies, its kernel sent {sent_by_b} datagrams; the sender got {got}");
    assert!(got >= 1.0, "no cookie reply provoked by {sent} initiations");
    assert_eq!(counted, sent_by_b, "cookie replies counted on b vs UDP datagrams b sent");
    // A busy machine may drop some on the way back; never more arrive than were counted.
    assert!(got <= counted);
    assert!(initiations <= sent as f64 && initiations >= counted);
    // The tunnel still works.
    lab.exec('a', "ping", &["-c", "3", "-i", "0.1", &lab.b.tunnel_v4.to_string()]).unwrap();
}

fn base64_key(s: &str) -> [u8; 32] {
    wg_collector::wireguard::Key::from_base64(s).unwrap().0
}

#[test]
fn junk_at_the_port_is_counted_by_reason_and_the_tunnel_keeps_working() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.b.ns, &[]).unwrap();
    let dev = lab.b.iface.as_str();
    let target: SocketAddr = format!("{}:51820", lab.b.underlay).parse().unwrap();
    let before = c.scrape().unwrap();
    let mut data = vec![0u8; 48];
    data[0] = 4;
    data[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    let mut bad_type = vec![0u8; 148];
    bad_type[0] = 9;
    let mut bad_size = vec![0u8; 100];
    bad_size[0] = 1;
    let junk: Vec<(Vec<u8>, usize)> = vec![(vec![1, 0], 3), (bad_type, 4), (bad_size, 5), (data, 6)];
    netns::within(&lab.a.ns, move || {
        let s = UdpSocket::bind("10.200.0.1:40001")?;
        for (payload, n) in &junk {
            for _ in 0..*n {
                s.send_to(payload, target)?;
            }
        }
        Ok(())
    })
    .unwrap();
    lab.exec('a', "ping", &["-c", "3", "-i", "0.05", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.scrape().unwrap();
    let inv = |r| {
        let l = [("device", dev), ("reason", r)];
        m.get_or_zero("wireguard_invalid_messages_total", &l)
            - before.get_or_zero("wireguard_invalid_messages_total", &l)
    };
    assert_eq!(
        [inv("too_short"), inv("bad_type"), inv("bad_size"), inv("unknown_index")],
        [3.0, 4.0, 5.0, 6.0],
        "{}",
        m.text
    );
    // The tunnel's own messages are valid and the peer's.
    let key = lab.a.public_key.as_str();
    assert_eq!(msg(&m, dev, key, "receive", "data") - msg(&before, dev, key, "receive", "data"), 3.0);
}

#[test]
fn roaming_is_counted_and_the_peer_counts_go_on() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    // b watches; a moves to another source port, which b learns as a's new endpoint.
    let c = Collector::start(&lab.b.ns, &[]).unwrap();
    let peer_a = [("device", lab.b.iface.as_str()), ("public_key", lab.a.public_key.as_str())];
    let ping = || lab.exec('a', "ping", &["-c", "10", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    ping();
    let before = c.scrape().unwrap();
    assert_eq!(before.get("wireguard_peer_endpoint_changes_total", &peer_a), Some(0.0));
    lab.wg('a', &["set", "{iface}", "listen-port", "51830"]).unwrap();
    ping();
    let (m, _) = c
        .wait_for(Duration::from_secs(3), |m| m.get("wireguard_peer_endpoint_changes_total", &peer_a) == Some(1.0))
        .unwrap();
    assert!(m.find("wireguard_peer_info", &[("endpoint", "10.200.0.1:51830")]).next().is_some(), "{}", m.text);
    for f in ["wireguard_peer_receive_packets_total", "wireguard_peer_transmit_packets_total"] {
        assert_eq!(m.get(f, &peer_a).unwrap() - before.get(f, &peer_a).unwrap(), 10.0, "{f}");
    }
}

#[test]
fn peers_added_and_removed_and_pools_are_counted_exactly() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = [("device", lab.a.iface.as_str())];
    let pool = |m: &Metrics, what| m.get(what, &[dev[0], ("family", "ipv4")]).unwrap();
    let m = c.scrape().unwrap();
    // 10.99.0.0/24 less the interface's .1 and peer b's .2.
    assert_eq!((pool(&m, "wireguard_address_pool_size"), pool(&m, "wireguard_address_pool_free")), (256.0, 254.0));
    assert_eq!(m.get("wireguard_peers_added_total", &dev), Some(0.0), "the peers found at start were not added");

    let (_, kc) = lab.keypair("c").unwrap();
    let (_, kd) = lab.keypair("d").unwrap();
    lab.wg('a', &["set", "{iface}", "peer", &kc, "allowed-ips", "10.99.0.3/32"]).unwrap();
    lab.wg('a', &["set", "{iface}", "peer", &kd, "allowed-ips", "10.99.0.16/28"]).unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(2), |m| m.get("wireguard_peers", &dev) == Some(3.0)).unwrap();
    assert_eq!(pool(&m, "wireguard_address_pool_free"), 254.0 - 1.0 - 16.0);
    assert_eq!(m.get("wireguard_peers_added_total", &dev), Some(2.0));
    lab.wg('a', &["set", "{iface}", "peer", &kc, "remove"]).unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(2), |m| m.get("wireguard_peers", &dev) == Some(2.0)).unwrap();
    assert_eq!(
        (m.get("wireguard_peers_added_total", &dev), m.get("wireguard_peers_removed_total", &dev)),
        (Some(2.0), Some(1.0))
    );
    assert_eq!(pool(&m, "wireguard_address_pool_free"), 254.0 - 16.0);
}

#[test]
fn friendly_names_come_from_wg_quick_comments_and_the_names_file() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let (_, kc) = lab.keypair("c").unwrap();
    lab.wg('a', &["set", "{iface}", "peer", &kc, "allowed-ips", "10.99.0.3/32"]).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-names", lab.a.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("wg0.conf");
    let names = dir.join("names");
    std::fs::write(&conf, format!("[Interface]\nListenPort = 51820\n\n[Peer]\n# friendly_name = side b\nPublicKey = {}\nAllowedIPs = 10.99.0.2/32\n", lab.b.public_key)).unwrap();
    std::fs::write(&names, format!("# test peers\n{kc} carol's phone\n")).unwrap();
    let c = Collector::start(
        &lab.a.ns,
        &[
            "--names.wg-config",
            conf.to_str().unwrap(),
            "--names.file",
            names.to_str().unwrap(),
            "--metrics.peer-name-label",
            "--peer.up-after",
            "3s",
        ],
    );
    // A fresh handshake with b (carol never connects).
    lab.reset_peer('a').unwrap();
    lab.exec('a', "ping", &["-c", "1", "-W", "2", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.as_ref().map(|c| c.scrape().unwrap()).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    let (c, m) = (c.unwrap(), m.unwrap());
    let name = |k: &str| {
        m.find("wireguard_peer_info", &[("public_key", k)])
            .next()
            .unwrap()
            .labels
            .iter()
            .find(|(l, _)| l == "name")
            .unwrap()
            .1
            .clone()
    };
    assert_eq!(name(&lab.b.public_key), "side b");
    assert_eq!(name(&kc), "carol's phone");
    // --metrics.peer-name-label: every per-peer series carries the name, once.
    let (b, dev) = (lab.b.public_key.as_str(), lab.a.iface.as_str());
    let named: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.name != "wireguard_device_info")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "public_key" && v == b))
        .collect();
    assert!(named.len() >= 10, "{} series of b", named.len());
    for s in &named {
        let names: Vec<&str> = s.labels.iter().filter(|(k, _)| k == "name").map(|(_, v)| v.as_str()).collect();
        assert_eq!(names, ["side b"], "{} {:?}", s.name, s.labels);
    }
    // wireguard_peer_up: b shook hands a moment ago, carol never; 3 s later b is down too.
    let up = |m: &Metrics, k: &str| m.get("wireguard_peer_up", &[("device", dev), ("public_key", k)]);
    assert_eq!((up(&m, b), up(&m, &kc)), (Some(1.0), Some(0.0)));
    c.wait_for(Duration::from_secs(6), |m| up(m, b) == Some(0.0)).unwrap();
}

#[test]
fn cardinality_flags_leave_out_what_they_name() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    for i in 0..20u8 {
        let (_, k) = lab.keypair(&format!("p{i}")).unwrap();
        lab.wg('a', &["set", "{iface}", "peer", &k, "allowed-ips", &format!("10.98.0.{i}/32")]).unwrap();
    }
    let c = Collector::start(
        &lab.a.ns,
        &["--redact", "endpoints", "--redact", "allowed-ips", "--metrics.max-series", "100"],
    )
    .unwrap();
    let m = c.scrape().unwrap();
    assert_eq!(m.find("wireguard_peer_allowed_ips_info", &[]).count(), 0);
    assert!(!m.text.contains("10.200.0.2:51820"), "the endpoint must not show:\n{}", m.text);
    let omitted = m.get("wireguard_collector_peers_omitted", &[("device", lab.a.iface.as_str())]).unwrap();
    let shown = m.find("wireguard_peer_info", &[]).count() as f64;
    assert!(omitted > 0.0 && shown + omitted == 21.0, "{shown} shown, {omitted} omitted");
    // The page holds at most 100 per-peer series, and as many as whole peers fill: every
    // added peer brings exactly 11 (info, endpoint changes, 2 byte counters, 2 handshake
    // gauges, up, 4 packet and payload counters), so the next one would not have fit.
    let per_peer = m
        .samples
        .iter()
        .filter(|s| s.name != "wireguard_device_info")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "public_key" && !v.is_empty()))
        .count();
    assert!(per_peer > 90 && per_peer <= 100, "{per_peer} per-peer series for a budget of 100");
    wait_until(Duration::from_secs(2), || c.log_text().contains("series limit reached")).unwrap();
}

/// `--underlay none`: the programs count on the WireGuard interface alone, as exactly as
/// with the underlay's (100 echo requests and replies), and time round trips there (100 ICMP
/// samples); nothing is attached to the underlay
/// (the links a run before pinned there are gone), and the families only the underlay
/// measures are absent rather than zeros that would read as "nothing lost".
#[test]
fn without_the_underlay_traffic_is_counted_exactly_and_the_underlay_families_are_absent() {
    use wg_common::names::{PROG_EGRESS, PROG_INGRESS, PROG_UNDER_EGRESS, PROG_UNDER_INGRESS};
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    // First with the underlay's programs, pinned as a restart or upgrade keeps them; then
    // restarted with none, which must detach them.
    let mut c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dir = c.pins.clone().unwrap().join(&lab.a.iface);
    let links = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("link_"))
            .collect()
    };
    let under = [PROG_UNDER_EGRESS, PROG_UNDER_INGRESS].map(|p| format!("link_{p}@under"));
    wait_until(Duration::from_secs(10), || under.iter().all(|l| links().contains(l))).unwrap();
    c.restart_with(&["--underlay", "none"]).unwrap();
    let peer = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())];
    let packets = |m: &Metrics| {
        let f = |name| m.get(name, &peer).unwrap_or_else(|| panic!("no {name}:\n{}", m.text));
        let icmp = [peer[0], peer[1], ("method", "icmp")];
        let rtts = m.get_or_zero("wireguard_peer_latency_seconds_count", &icmp);
        (f("wireguard_peer_transmit_packets_total"), f("wireguard_peer_receive_packets_total"), rtts)
    };
    let before = packets(&c.scrape().unwrap());
    lab.exec('a', "ping", &["-c", "100", "-i", "0.002", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.scrape().unwrap();
    let after = packets(&m);
    // Round trips are timed on the WireGuard interface: every echo request answered.
    assert_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), (100.0, 100.0, 100.0));
    for family in [
        "wireguard_messages_total",
        "wireguard_peer_lost_messages_total",
        "wireguard_device_handshake_rtt_seconds_count",
    ] {
        assert_eq!(m.find(family, &[]).count(), 0, "{family} on the page:\n{}", m.text);
    }
    assert_eq!(m.get("wireguard_collector_errors_total", &[("source", "bpf")]), Some(0.0));
    // Each hook's link is pinned under the device's directory as link_<program>@<interface>.
    let (links, plain) = (links(), [PROG_EGRESS, PROG_INGRESS].map(|p| format!("link_{p}@{}", lab.a.iface)));
    assert!(plain.iter().all(|l| links.contains(l)), "{links:?}");
    assert!(!links.iter().any(|l| l.contains(PROG_UNDER_EGRESS) || l.contains(PROG_UNDER_INGRESS)), "{links:?}");
    assert!(c.log_text().contains("detached (--underlay none)"), "{}", c.log_text());
}
