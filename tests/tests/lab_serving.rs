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
