//! The collector follows WireGuard while it runs: peers added and removed, allowed IPs
//! moved, a device deleted and created again.

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
    assert_eq!(m.get("wireguard_peer_allowed_ips_info", &[peer_c[0], peer_c[1], ("allowed_ip", "10.99.0.3/32")]), Some(1.0));
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

#[test]
fn device_deleted_and_created_again_is_attached_again() {
    let mut lab = Lab::new(Implementation::WireguardGo).unwrap();
    let mut c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = lab.a.iface.clone();
    let key_b = lab.b.public_key.clone();
    let peer_b = [("device", dev.as_str()), ("public_key", key_b.as_str())];
    let b = lab.b.tunnel_v4.to_string();

    lab.exec('a', "ping", &["-c", "10", "-i", "0.01", "-q", &b]).unwrap();
    let m = c.scrape().unwrap();
    let old = (m.get(TX, &peer_b).unwrap(), m.get("wireguard_peer_transmit_bytes_total", &peer_b).unwrap());
    assert!(old.0 >= 10.0);

    lab.stop_daemon('a').unwrap();
    c.wait_for(Duration::from_secs(5), |m| m.get("wireguard_device_info", &[("device", &dev)]).is_none()).unwrap();
    assert!(c.is_running(), "the collector must survive its device going away");

    lab.start_daemon('a').unwrap();
    lab.wait_tunnel().unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(5), |m| m.get(TX, &peer_b).is_some()).unwrap();
    let before = (m.get(TX, &peer_b).unwrap(), m.get(RX, &peer_b).unwrap());
    // The new device counts from zero, WireGuard's and our programs' alike; the series do not
    // go backwards (offsets continue them within the collector's life).
    assert!(before.0 >= old.0, "{} packets after, {} before", before.0, old.0);
    assert!(m.get("wireguard_peer_transmit_bytes_total", &peer_b).unwrap() >= old.1);
    lab.exec('a', "ping", &["-c", "20", "-i", "0.01", "-q", &b]).unwrap();
    let m = c.scrape().unwrap();
    assert_eq!(m.get(TX, &peer_b).unwrap() - before.0, 20.0, "{}", m.text);
    assert_eq!(m.get(RX, &peer_b).unwrap() - before.1, 20.0, "{}", m.text);
    assert!(c.is_running());
}
