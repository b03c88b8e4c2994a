//! The collector follows WireGuard while it runs: peers added and removed, allowed IPs
//! moved. (A device deleted and created again: lab_changes.rs.)

use std::time::Duration;

use wg_tests::{Collector, Implementation, Lab, Metrics};

const TX: &str = "wireguard_peer_transmit_packets_total";
const TX_BYTES: &str = "wireguard_peer_transmit_payload_bytes_total";
const RX: &str = "wireguard_peer_receive_packets_total";

/// Pings that get no answer (the peer is not real); only what leaves wg0 matters.
fn ping_unanswered(lab: &Lab, target: &str, count: u32) {
    let _ = lab.exec('a', "ping", &["-c", &count.to_string(), "-i", "0.01", "-W", "0.05", "-q", target]);
}

#[test]
fn peers_come_and_go_and_allowed_ips_move_attribution() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = lab.a.iface.as_str();
    let (_, key_c) = lab.keypair("c").unwrap();
    let peer_c = [("device", dev), ("public_key", key_c.as_str())];

    // Added while the collector runs: on /metrics within 2 s, from zero.
    lab.wg('a', &["set", "{iface}", "peer", &key_c, "allowed-ips", "10.99.0.3/32"]).unwrap();
    let (m, took) = c.wait_for(Duration::from_secs(5), |m| m.get(TX, &peer_c).is_some()).unwrap();
    assert!(took < Duration::from_secs(2), "new peer took {took:?} to appear");
    assert_eq!(m.get(TX, &peer_c), Some(0.0));
    assert_eq!(m.get("wireguard_peers", &[("device", dev)]), Some(2.0));
    assert_eq!(
        m.get("wireguard_peer_allowed_ips_info", &[peer_c[0], peer_c[1], ("allowed_ip", "10.99.0.3/32")]),
        Some(1.0)
    );
    assert_eq!(m.get("wireguard_peer_last_handshake_seconds", &peer_c), Some(0.0), "never shook hands");

    ping_unanswered(&lab, "10.99.0.3", 5);
    let m = c.scrape().unwrap();
    assert_eq!((m.get(TX, &peer_c), m.get(TX_BYTES, &peer_c), m.get(RX, &peer_c)), (Some(5.0), Some(420.0), Some(0.0)));

    // Its allowed IP changes: packets to the new address are its, the old one is nobody's.
    let no_peer = [("device", dev), ("direction", "transmit"), ("reason", "no_peer")];
    let unattributed_before = m.get_or_zero("wireguard_unattributed_packets_total", &no_peer);
    lab.wg('a', &["set", "{iface}", "peer", &key_c, "allowed-ips", "10.99.0.4/32"]).unwrap();
    c.wait_for(Duration::from_secs(2), |m| {
        m.get("wireguard_peer_allowed_ips_info", &[peer_c[0], peer_c[1], ("allowed_ip", "10.99.0.4/32")]).is_some()
    })
    .unwrap();
    ping_unanswered(&lab, "10.99.0.4", 3);
    ping_unanswered(&lab, "10.99.0.3", 2);
    let m = c.scrape().unwrap();
    assert_eq!(m.get(TX, &peer_c), Some(8.0), "{}", m.text);
    assert_eq!(m.get_or_zero("wireguard_unattributed_packets_total", &no_peer) - unattributed_before, 2.0);

    // Removed: every series naming it is gone within 2 s; the other peer is untouched.
    lab.wg('a', &["set", "{iface}", "peer", &key_c, "remove"]).unwrap();
    let (m, took) = c.wait_for(Duration::from_secs(5), |m: &Metrics| !m.mentions("public_key", &key_c)).unwrap();
    assert!(took < Duration::from_secs(2), "removed peer took {took:?} to disappear");
    assert_eq!(m.get("wireguard_peers", &[("device", dev)]), Some(1.0));
    assert!(m.get(TX, &[("device", dev), ("public_key", &lab.b.public_key)]).is_some());

    // Added again: it starts from zero.
    lab.wg('a', &["set", "{iface}", "peer", &key_c, "allowed-ips", "10.99.0.3/32"]).unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(2), |m| m.get(TX, &peer_c).is_some()).unwrap();
    assert_eq!(m.get(TX, &peer_c), Some(0.0));
}
