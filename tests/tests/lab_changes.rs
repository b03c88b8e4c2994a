//! Flaps and configuration changes are seen as they happen, counted by what changed and
//! logged by device and field, never with a secret.

use std::time::Duration;

use wg_tests::{lab::random_public_key, Collector, Implementation, Lab, Metrics};

const CHANGES: &str = "wireguard_config_changes_total";

#[test]
fn each_configuration_change_is_counted_by_field_and_logged() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = lab.a.iface.as_str();
    let count = |m: &Metrics, field: &str| m.get(CHANGES, &[("device", dev), ("field", field)]);
    let m = c.scrape().unwrap();
    for f in ["private_key", "listen_port", "fwmark", "peers", "allowed_ips", "endpoint"] {
        assert_eq!(count(&m, f), Some(0.0), "{f}: {}", m.text);
    }
    let b = lab.b.public_key.as_str();
    let (key_file, new_public) = lab.keypair("a2").unwrap();
    let new_private = std::fs::read_to_string(&key_file).unwrap();
    // One field at a time, each seen before the next (the endpoint first, while the tunnel
    // is quiet: a change with nothing received from the peer is configuration, not roaming).
    let steps: [(&str, Vec<&str>); 6] = [
        ("endpoint", vec!["peer", b, "endpoint", "10.200.0.77:51820"]),
        ("listen_port", vec!["listen-port", "51999"]),
        ("fwmark", vec!["fwmark", "0x42"]),
        ("private_key", vec!["private-key", key_file.to_str().unwrap()]),
        ("allowed_ips", vec!["peer", b, "allowed-ips", "10.99.0.2/32,10.98.0.0/24"]),
        ("peers", vec!["peer", "PLACEHOLDER", "allowed-ips", "10.99.0.9/32"]),
    ];
    let other = random_public_key();
    for (field, args) in steps {
        let mut args: Vec<&str> =
            args.into_iter().map(|a| if a == "PLACEHOLDER" { other.as_str() } else { a }).collect();
        args.insert(0, "{iface}");
        args.insert(0, "set");
        lab.wg('a', &args).unwrap();
        let (m, took) = c.wait_for(Duration::from_secs(5), |m| count(m, field) == Some(1.0)).unwrap();
        assert!(took < Duration::from_secs(2), "{field} took {took:?}");
        let total: f64 = ["private_key", "listen_port", "fwmark", "peers", "allowed_ips", "endpoint"]
            .iter()
            .map(|f| count(&m, f).unwrap())
            .sum();
        let done = ["endpoint", "listen_port", "fwmark", "private_key", "allowed_ips", "peers"]
            .iter()
            .position(|f| *f == field)
            .unwrap()
            + 1;
        assert_eq!(total, done as f64, "only {field} changed now: {}", m.text);
    }
    let log = c.log_text();
    for (field, says) in [
        ("endpoint", "10.200.0.77:51820".to_string()),
        ("listen_port", "51820 → 51999".to_string()),
        ("fwmark", "0x0 → 0x42".to_string()),
        ("private_key", format!("public key now {new_public}")),
        ("allowed_ips", "10.98.0.0/24,10.99.0.2/32".to_string()),
        ("peers", "added".to_string()),
    ] {
        let line = log.lines().find(|l| {
            l.contains("configuration changed") && l.split_whitespace().any(|w| w == format!("field={field}"))
        });
        let line = line.unwrap_or_else(|| panic!("no log line for {field}: {log}"));
        assert!(line.contains(dev) && line.contains(&says), "{line}");
    }
    assert!(!log.contains(new_private.trim()), "the private key must never be logged");
}

#[test]
fn flaps_are_counted_as_they_happen_and_the_device_is_attached_again() {
    let mut lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = lab.a.iface.clone();
    let d = [("device", dev.as_str())];
    let m = c.scrape().unwrap();
    assert_eq!((m.get("wireguard_device_up", &d), m.get("wireguard_device_flaps_total", &d)), (Some(1.0), Some(0.0)));

    // Down and up again within a few milliseconds, far inside one poll: the link events see it.
    wg_tests::netns::sh(&[
        "sh",
        "-c",
        &format!("ip -n {ns} link set {dev} down && ip -n {ns} link set {dev} up", ns = lab.a.ns),
    ])
    .unwrap();
    let (m, _) =
        c.wait_for(Duration::from_secs(3), |m| m.get("wireguard_device_flaps_total", &d) == Some(1.0)).unwrap();
    assert_eq!(m.get("wireguard_device_up", &d), Some(1.0));

    // Held down: up is 0 while it lasts.
    lab.exec('a', "ip", &["link", "set", &dev, "down"]).unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(3), |m| m.get("wireguard_device_up", &d) == Some(0.0)).unwrap();
    assert_eq!(m.get("wireguard_device_flaps_total", &d), Some(2.0));
    lab.exec('a', "ip", &["link", "set", &dev, "up"]).unwrap();
    c.wait_for(Duration::from_secs(3), |m| m.get("wireguard_device_up", &d) == Some(1.0)).unwrap();

    // Deleted (its daemon stopped): down and counted, its pins removed; created again: attached
    // again and counting exactly. (A new wireguard-go device starts without peers, so its
    // peer is removed and added: that peer's series starts again, as WireGuard's own does.)
    let key_b = lab.b.public_key.clone();
    let peer_b = [("device", dev.as_str()), ("public_key", key_b.as_str())];
    lab.exec('a', "ping", &["-c", "10", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let before = c.scrape().unwrap().get("wireguard_peer_transmit_packets_total", &peer_b).unwrap();
    assert_eq!(before, 10.0);
    let pins = c.pins.clone().unwrap().join(&dev);
    assert!(pins.exists());
    lab.stop_daemon('a').unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(3), |m| m.get("wireguard_device_up", &d) == Some(0.0)).unwrap();
    assert_eq!(m.get("wireguard_device_flaps_total", &d), Some(3.0));
    assert_eq!(m.get("wireguard_device_info", &d), None);
    wg_tests::lab::wait_until(Duration::from_secs(2), || !pins.exists()).unwrap();
    lab.start_daemon('a').unwrap();
    lab.wait_tunnel().unwrap();
    let (m, _) = c.wait_for(Duration::from_secs(5), |m| m.get("wireguard_device_up", &d) == Some(1.0)).unwrap();
    assert_eq!(m.get("wireguard_device_flaps_total", &d), Some(3.0), "coming back is no flap");
    let resumed = c.scrape().unwrap().get("wireguard_peer_transmit_packets_total", &peer_b).unwrap();
    lab.exec('a', "ping", &["-c", "20", "-i", "0.01", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let m = c.scrape().unwrap();
    assert_eq!(m.get("wireguard_peer_transmit_packets_total", &peer_b).unwrap() - resumed, 20.0);
    let log = c.log_text();
    assert!(log.contains("device gone; detaching"), "{log}");
    assert_eq!(log.matches("device went").count(), 3, "{log}");
    assert_eq!(log.matches("underlay programs attached").count(), 2, "attached again: {log}");
}
