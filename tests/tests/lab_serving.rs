//! What the HTTP side serves: formats by negotiation, the telemetry path, the device filter.

use wg_tests::{Collector, Implementation, Lab};

#[test]
fn serves_openmetrics_when_asked_and_prometheus_text_otherwise() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &["--web.telemetry-path", "/wg"]).unwrap();
    let (head, body) =
        c.get("/wg", &[("Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")]).unwrap();
    assert!(
        head.contains("200 OK") && head.to_lowercase().contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE wireguard_peer_transmit_packets counter"), "{body}");

    let (head, body) = c.get("/wg", &[]).unwrap();
    assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(!body.contains("# EOF") && body.contains("# TYPE wireguard_peer_transmit_packets_total counter"), "{body}");

    let (head, _) = c.get("/metrics", &[]).unwrap();
    assert!(head.starts_with("HTTP/1.0 404") || head.starts_with("HTTP/1.1 404"), "{head}");

    // Gzip when asked, as Prometheus always does: the same page, compressed.
    let addr = "127.0.0.1:9586".parse().unwrap();
    let (head, gz) = wg_tests::netns::within(&lab.a.ns, move || {
        wg_tests::scrape::http_get_bytes(addr, "/wg", &[("Accept-Encoding", "gzip")])
    })
    .unwrap();
    assert!(head.to_lowercase().contains("content-encoding: gzip"), "{head}");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let m = wg_tests::Metrics::parse(&text).unwrap();
    assert!(m.get("wireguard_peers", &[("device", lab.a.iface.as_str())]) == Some(1.0), "{text}");
    assert!(gz.len() * 2 < text.len(), "{} compressed vs {} plain", gz.len(), text.len());

    // zstd when it is preferred (Prometheus' zstd-scrape feature asks for it), gzip when
    // it is refused, plain when both are.
    let get = |coding: &'static str| {
        wg_tests::netns::within(&lab.a.ns, move || {
            wg_tests::scrape::http_get_bytes(addr, "/wg", &[("Accept-Encoding", coding)])
        })
        .unwrap()
    };
    let (head, zst) = get("gzip;q=0.5, zstd");
    assert!(head.to_lowercase().contains("content-encoding: zstd"), "{head}");
    let text = String::from_utf8(zstd::stream::decode_all(&zst[..]).unwrap()).unwrap();
    let m = wg_tests::Metrics::parse(&text).unwrap();
    assert!(m.get("wireguard_peers", &[("device", lab.a.iface.as_str())]) == Some(1.0), "{text}");
    assert!(zst.len() * 2 < text.len(), "{} compressed vs {} plain", zst.len(), text.len());
    let (head, _) = get("zstd;q=0, gzip");
    assert!(head.to_lowercase().contains("content-encoding: gzip"), "{head}");
    let (head, plain) = get("zstd;q=0, gzip;q=0");
    assert!(!head.to_lowercase().contains("content-encoding"), "{head}");
    assert!(String::from_utf8(plain).unwrap().contains("# TYPE wireguard_peers gauge"));
}

#[test]
fn device_filter_leaves_other_devices_alone() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &["--device", "wg-other"]).unwrap();
    let m = c.scrape().unwrap();
    assert_eq!(m.find("wireguard_device_info", &[]).count(), 0, "{}", m.text);
    assert_eq!(m.find("wireguard_peer_info", &[]).count(), 0, "{}", m.text);
    // Not attached either.
    assert!(!c.log_text().contains("programs attached"), "{}", c.log_text());
    drop(c);

    let c = Collector::start(&lab.a.ns, &["--device", &lab.a.iface]).unwrap();
    assert_eq!(c.scrape().unwrap().find("wireguard_device_info", &[]).count(), 1);
    assert!(c.log_text().contains("programs attached"), "{}", c.log_text());
}

#[test]
fn bpf_stats_account_every_program_run() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &["--bpf.stats"]).unwrap();
    let dev = lab.a.iface.as_str();
    let prog = |p| [("device", dev), ("program", p)];
    let peer_b = [("device", dev), ("public_key", lab.b.public_key.as_str())];
    let unattributed_tx = |m: &wg_tests::Metrics| -> f64 {
        m.find("wireguard_unattributed_packets_total", &[("device", dev), ("direction", "transmit")])
            .map(|s| s.value)
            .sum()
    };
    let before = c.scrape().unwrap();
    lab.exec('a', "ping", &["-c", "50", "-i", "0.005", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.scrape().unwrap();

    // Without GSO each egress run is one packet: to peer b, or to nobody.
    let runs = m.get("wireguard_collector_bpf_runs_total", &prog("wg_plain_egress")).unwrap()
        - before.get_or_zero("wireguard_collector_bpf_runs_total", &prog("wg_plain_egress"));
    let packets = m.get("wireguard_peer_transmit_packets_total", &peer_b).unwrap()
        - before.get("wireguard_peer_transmit_packets_total", &peer_b).unwrap()
        + unattributed_tx(&m)
        - unattributed_tx(&before);
    assert_eq!(runs, packets, "{}", m.text);
    assert!(runs >= 50.0);
    let time = m.get("wireguard_collector_bpf_run_time_seconds_total", &prog("wg_plain_egress")).unwrap();
    let total_runs = m.get("wireguard_collector_bpf_runs_total", &prog("wg_plain_egress")).unwrap();
    let ns_per_run = time * 1e9 / total_runs;
    assert!(ns_per_run > 0.0 && ns_per_run < 100_000.0, "{ns_per_run} ns per run");
    println!("egress program: {ns_per_run:.0} ns per packet (with stats overhead) over {total_runs} runs");

    // Every family of this page (stats on, nothing redacted) is in the catalogue, with its
    // type, in its order, and the page has every family of the catalogue but the
    // prometheus_wireguard_exporter ones (--compat, off here).
    let on_page: Vec<(&str, &str)> =
        m.text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|t| t.split_once(' ').unwrap()).collect();
    let catalogue: Vec<(String, &str)> = wg_collector::metrics::GROUPS
        .iter()
        .filter(|g| g.name != "compat")
        .flat_map(|g| g.families)
        .map(|f| (f.exposed_name(), f.kind.label()))
        .collect();
    let catalogue: Vec<(&str, &str)> = catalogue.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    assert_eq!(on_page, catalogue);
}

/// GET /metrics at `addr` from inside namespace `ns`: the status line, or the error.
fn status_from(ns: &str, addr: &str) -> String {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    match wg_tests::netns::within(ns, move || wg_tests::scrape::http_get_with(addr, "/metrics", &[])) {
        Ok((head, _)) => head.lines().next().unwrap_or_default().to_string(),
        Err(e) => format!("error: {e:#}"),
    }
}

#[test]
fn vpn_only_listens_on_the_interface_addresses_and_follows_them() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let dev = lab.a.iface.as_str();
    let listen = format!("{dev}:9586");
    let c = Collector::start(&lab.a.ns, &["--web.listen-address", &listen, "--web.insecure"]).unwrap();
    let a_v4 = format!("{}:9586", lab.a.tunnel_v4);
    let a_v6 = format!("[{}]:9586", lab.a.tunnel_v6);

    // Over the tunnel, from the peer: served, on both families.
    assert!(status_from(&lab.b.ns, &a_v4).contains("200"), "{}", c.log_text());
    assert!(status_from(&lab.b.ns, &a_v6).contains("200"));
    // Not on loopback nor on the underlay address.
    assert!(status_from(&lab.a.ns, "127.0.0.1:9586").contains("refused"));
    let underlay = format!("{}:9586", lab.a.underlay);
    assert!(status_from(&lab.b.ns, &underlay).starts_with("error"), "{}", status_from(&lab.b.ns, &underlay));
    // Each socket is bound to the interface itself.
    let ss = lab.exec('a', "ss", &["-Hltn", "sport", "= :9586"]).unwrap();
    assert_eq!(ss.lines().count(), 2, "{ss}");
    assert!(ss.lines().all(|l| l.contains(&format!("%{dev}:9586"))), "{ss}");

    // An address added: listened on within a second; one removed: no longer. (A /32, so
    // removing the /24 leaves it: a second address of the same subnet would go with it.)
    lab.exec('a', "ip", &["addr", "add", "10.99.0.50/32", "dev", dev]).unwrap();
    let b_allows = format!("{}/32,{}/128,10.99.0.50/32", lab.a.tunnel_v4, lab.a.tunnel_v6);
    lab.wg('b', &["set", "{iface}", "peer", &lab.a.public_key, "allowed-ips", &b_allows]).unwrap();
    wg_tests::lab::wait_until(std::time::Duration::from_secs(2), || {
        status_from(&lab.b.ns, "10.99.0.50:9586").contains("200")
    })
    .unwrap();
    lab.exec('a', "ip", &["addr", "del", &format!("{}/24", lab.a.tunnel_v4), "dev", dev]).unwrap();
    let gone = wg_tests::lab::wait_until(std::time::Duration::from_secs(2), || {
        status_from(&lab.b.ns, &a_v4).starts_with("error")
    });
    assert!(gone.is_ok(), "{} / {}", status_from(&lab.b.ns, &a_v4), c.log_text());
    assert!(status_from(&lab.b.ns, "10.99.0.50:9586").contains("200"));
    let log = c.log_text();
    assert!(log.contains("stopped listening (address removed)"), "{log}");
}

#[test]
fn an_interface_listener_without_authentication_needs_insecure() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let listen = format!("{}:9586", lab.a.iface);
    let err = Collector::start(&lab.a.ns, &["--web.listen-address", &listen]).err().unwrap().to_string();
    assert!(err.contains(&format!("--web.listen-address {listen}: not a loopback address")), "{err}");
}

/// `--scrape.max-age`: scrapes within the age share one reading (the same counts, however
/// much traffic passed since), and the first scrape past it reads again, exactly.
#[test]
fn scrapes_share_a_reading_younger_than_max_age() {
    use std::time::{Duration, Instant};
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    // The poll loop far apart, so only scrapes read.
    let c = Collector::start(&lab.a.ns, &["--scrape.max-age", "3", "--poll-interval", "600"]).unwrap();
    let l = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())];
    let tx = |m: &wg_tests::Metrics| {
        m.get("wireguard_peer_transmit_packets_total", &l).unwrap_or_else(|| panic!("{}", m.text))
    };
    let age = |m: &wg_tests::Metrics| {
        m.get("wireguard_collector_reading_age_seconds", &[]).unwrap_or_else(|| panic!("{}", m.text))
    };

    // A reading of its own, then pings the next scrape must not show yet.
    std::thread::sleep(Duration::from_secs(3));
    let first = c.scrape().unwrap();
    let read_at = Instant::now();
    assert!(age(&first) < 1.0, "a fresh reading: {}", age(&first));
    lab.exec('a', "ping", &["-c", "20", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let shared = c.scrape().unwrap();
    assert!(read_at.elapsed() < Duration::from_secs(2), "the test was too slow to see sharing");
    assert_eq!(tx(&shared), tx(&first), "a scrape within --scrape.max-age shows the same reading");
    assert!(age(&shared) >= age(&first), "its age grows: {} then {}", age(&first), age(&shared));

    // Past the age: read again, every ping there.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(read_at.elapsed()) + Duration::from_millis(200));
    let fresh = c.scrape().unwrap();
    assert_eq!(tx(&fresh) - tx(&first), 20.0, "{}", fresh.text);
    assert!(age(&fresh) < 1.0, "a new reading: {}", age(&fresh));
}

/// Scrapes that arrive together share one encoding of their reading: the page's own age
/// (measured while it is encoded) then has a few values among many scrapes, not one each.
/// One reading for all (`--scrape.max-age`), and 2,000 peers, so that encoding takes longer
/// than the scrapes take to arrive.
#[test]
fn scrapes_that_arrive_together_share_one_page() {
    use wg_tests::lab::{key_hex, random_public_key};
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let body: String = (0..2000)
        .map(|i| {
            format!("public_key={}\nallowed_ip=10.150.{}.{}/32\n", key_hex(&random_public_key()), i / 256, i % 256)
        })
        .collect();
    lab.uapi_set('a', &body).unwrap();
    let c = Collector::start(&lab.a.ns, &["--scrape.max-age", "600", "--poll-interval", "600"]).unwrap();
    let barrier = std::sync::Barrier::new(16);
    let pages: Vec<wg_tests::Metrics> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    c.scrape().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ages: Vec<String> = pages
        .iter()
        .map(|m| {
            m.get("wireguard_collector_reading_age_seconds", &[]).unwrap_or_else(|| panic!("{}", m.text)).to_string()
        })
        .collect();
    ages.sort();
    ages.dedup();
    assert!(ages.len() <= 4, "16 scrapes at once made {} pages: {ages:?}", ages.len());
    // Each page complete: the peer on every one.
    assert!(pages.iter().all(|m| m.mentions("public_key", &lab.b.public_key)));
}
