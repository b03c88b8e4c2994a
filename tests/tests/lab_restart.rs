//! The programs and maps are pinned: a collector restart or upgrade loses no packet, and a
//! collector refuses maps it cannot adopt rather than misread them.

use std::time::Duration;

use wg_tests::{Collector, Implementation, Lab};

const TX: &str = "wireguard_peer_transmit_packets_total";
const RX: &str = "wireguard_peer_receive_packets_total";

/// "N packets transmitted, M received" of ping's summary.
fn ping_summary(out: &str) -> (f64, f64) {
    let line =
        out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary in {out}"));
    let num = |word: &str| -> f64 {
        let before = &line[..line.find(word).unwrap()];
        before.split_whitespace().last().unwrap().parse().unwrap()
    };
    (num(" packets transmitted"), num(" received"))
}

#[test]
fn a_restart_in_the_middle_of_a_ping_flood_loses_no_packet() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let mut c = Collector::start(&lab.a.ns, &[]).unwrap();
    let dev = lab.a.iface.as_str();
    let peer_b = [("device", dev), ("public_key", lab.b.public_key.as_str())];
    let m = c.scrape().unwrap();
    let before = (m.get(TX, &peer_b).unwrap(), m.get(RX, &peer_b).unwrap());

    let target = lab.b.tunnel_v4.to_string();
    let ns = lab.a.ns.clone();
    let flood = std::thread::spawn(move || {
        wg_tests::netns::run(wg_tests::netns::cmd(&ns, "ping").args(["-f", "-c", "20000", "-q", &target])).unwrap()
    });
    // Mid-flood: the counts move, then the collector goes away and comes back.
    let (mid, _) =
        c.wait_for(Duration::from_secs(10), |m| m.get(TX, &peer_b).unwrap_or(0.0) > before.0 + 500.0).unwrap();
    c.restart().unwrap();
    assert!(!flood.is_finished(), "the flood ended before the restart; make it longer");
    let after_restart = c.scrape().unwrap();
    let (sent, received) = ping_summary(&flood.join().unwrap());
    assert_eq!(sent, 20000.0);

    let m = c.scrape().unwrap();
    assert_eq!(m.get(TX, &peer_b).unwrap() - before.0, sent, "{}", c.log_text());
    assert_eq!(m.get(RX, &peer_b).unwrap() - before.1, received);
    // Never backwards: mid-flood ≤ right after the restart ≤ the end.
    let tx = |m: &wg_tests::Metrics| m.get(TX, &peer_b).unwrap();
    assert!(tx(&mid) <= tx(&after_restart) && tx(&after_restart) <= tx(&m));
    let log = c.log_text();
    assert!(log.contains("adopted pinned maps"), "{log}");
    assert_eq!(log.matches("attaching anew").count(), 0, "the pinned links took the new programs: {log}");
}

#[test]
fn maps_of_another_size_are_refused_then_replaced_when_asked() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let mut c = Collector::start(&lab.a.ns, &["--bpf.max-peers", "64"]).unwrap();
    let dev = lab.a.iface.as_str();
    let peer_b = [("device", dev), ("public_key", lab.b.public_key.as_str())];
    let b = lab.b.tunnel_v4.to_string();
    lab.exec('a', "ping", &["-c", "5", "-i", "0.01", "-q", &b]).unwrap();
    let counted = c.scrape().unwrap().get(TX, &peer_b).unwrap();
    assert_eq!(counted, 5.0, "5 echo requests, nothing else to b since the programs were attached");

    // Another size: refused with the reason; WireGuard's own state is still served.
    c.restart_with(&["--bpf.max-peers", "128"]).unwrap();
    let (m, _) =
        c.wait_for(Duration::from_secs(5), |m| m.get("wireguard_peer_receive_bytes_total", &peer_b).is_some()).unwrap();
    assert_eq!(m.get(TX, &peer_b), None, "no eBPF counts from maps it refused");
    assert!(m.get("wireguard_collector_errors_total", &[("source", "bpf")]).unwrap() >= 1.0);
    let log = c.log_text();
    assert!(log.contains("map PEER_COUNTERS has 64 entries, 128 were asked for"), "{log}");
    assert!(log.contains("--bpf.replace-pinned"), "{log}");

    // The old programs kept counting meanwhile; a restart with the old size adopts them.
    lab.exec('a', "ping", &["-c", "7", "-i", "0.01", "-q", &b]).unwrap();
    c.restart_with(&["--bpf.max-peers", "64"]).unwrap();
    assert_eq!(c.scrape().unwrap().get(TX, &peer_b), Some(counted + 7.0));

    // Replaced when asked: counting from zero with the new size.
    c.restart_with(&["--bpf.max-peers", "128", "--bpf.replace-pinned"]).unwrap();
    assert_eq!(c.scrape().unwrap().get(TX, &peer_b), Some(0.0));
    lab.exec('a', "ping", &["-c", "3", "-i", "0.01", "-q", &b]).unwrap();
    assert_eq!(c.scrape().unwrap().get(TX, &peer_b), Some(3.0));
    assert!(c.log_text().contains("replacing pinned maps"));
}

#[test]
fn unpin_detaches_and_removes_the_pins() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let mut c = Collector::start(&lab.a.ns, &[]).unwrap();
    let pins = c.pins.clone().unwrap();
    let dir = pins.join(&lab.a.iface);
    let link = dir.join(format!("link_wg_plain_egress@{}", lab.a.iface));
    assert!(dir.join("PEER_COUNTERS").exists() && link.exists());
    // The program the pinned link runs: it lives on after the collector, until unpinned.
    let info = wg_tests::netns::sh(&["bpftool", "-j", "link", "show", "pinned", link.to_str().unwrap()]).unwrap();
    let prog_id =
        info.split("\"prog_id\":").nth(1).and_then(|r| r.split([',', '}']).next()).unwrap().trim().to_string();
    c.stop();
    assert!(
        wg_tests::netns::sh(&["bpftool", "prog", "show", "id", &prog_id]).is_ok(),
        "program {prog_id} ended with the collector"
    );
    let bin = wg_tests::collector::binary().unwrap();
    let out = wg_tests::netns::run(wg_tests::netns::cmd(&lab.a.ns, bin.to_str().unwrap()).args([
        "--bpf.unpin",
        "--bpf.pin-path",
        pins.to_str().unwrap(),
    ]))
    .unwrap();
    assert!(out.contains(&format!("unpinned 1 device(s) under {}: {}", pins.display(), lab.a.iface)), "{out}");
    assert!(!dir.exists());
    // Detached and gone (the kernel frees it once nothing refers to it).
    wg_tests::lab::wait_until(Duration::from_secs(2), || {
        wg_tests::netns::sh(&["bpftool", "prog", "show", "id", &prog_id]).is_err()
    })
    .unwrap();
}
