//! Malformed packets on a real WireGuard interface: counted by reason, passed on, and
//! reported by the programs' own log (aya-log) in the collector's debug log.

use std::time::Duration;

use wg_tests::{netns, Collector, Implementation, Lab};

#[test]
fn malformed_packets_are_counted_passed_and_logged() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start_with_log(&lab.a.ns, &[], "info,wg_ebpf=debug").unwrap();
    let dev = lab.a.iface.as_str();
    let reason = |r| [("device", dev), ("direction", "transmit"), ("reason", r)];
    let before = c.scrape().unwrap();

    // Three packets whose version nibble is 0, two IPv4 packets cut at 10 bytes.
    let mut frames = vec![vec![0u8; 30]; 3];
    frames.extend(vec![vec![0x45u8, 0, 0, 10, 0, 0, 0, 0, 64, 17]; 2]);
    netns::send_raw(&lab.a.ns, dev, frames).unwrap();

    let m = c.scrape().unwrap();
    let delta = |r| {
        m.get_or_zero("wireguard_unattributed_packets_total", &reason(r))
            - before.get_or_zero("wireguard_unattributed_packets_total", &reason(r))
    };
    assert_eq!(delta("not_ip"), 3.0, "{}", m.text);
    assert_eq!(delta("truncated"), 2.0, "{}", m.text);
    assert_eq!(delta("no_peer"), 0.0, "{}", m.text);

    // The tunnel still works, and its counts are untouched by the junk.
    let peer_b = [("device", dev), ("public_key", lab.b.public_key.as_str())];
    let tx0 = m.get("wireguard_peer_transmit_packets_total", &peer_b).unwrap();
    lab.exec('a', "ping", &["-c", "5", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.scrape().unwrap();
    assert_eq!(m.get("wireguard_peer_transmit_packets_total", &peer_b).unwrap() - tx0, 5.0);

    // The programs' log records reach the collector's log within a poll interval or two.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = c.log_text();
        if log.matches("malformed packet").count() >= 5 {
            assert!(log.contains("reason 1") && log.contains("reason 2"), "{log}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no malformed-packet records in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
