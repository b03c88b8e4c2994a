//! What the HTTP side serves: formats by negotiation, the telemetry path, the device filter.

use wg_tests::{Collector, Implementation, Lab};

#[test]
fn serves_openmetrics_when_asked_and_prometheus_text_otherwise() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &["--web.telemetry-path", "/wg"]).unwrap();
    let (head, body) = c.get("/wg", &[("Accept", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")]).unwrap();
    assert!(head.contains("200 OK") && head.to_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE wireguard_peer_transmit_packets counter"), "{body}");

    let (head, body) = c.get("/wg", &[]).unwrap();
    assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(!body.contains("# EOF") && body.contains("# TYPE wireguard_peer_transmit_packets_total counter"), "{body}");

    let (head, _) = c.get("/metrics", &[]).unwrap();
    assert!(head.starts_with("HTTP/1.0 404") || head.starts_with("HTTP/1.1 404"), "{head}");
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
        m.find("wireguard_unattributed_packets_total", &[("device", dev), ("direction", "transmit")]).map(|s| s.value).sum()
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
}
