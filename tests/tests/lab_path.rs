//! Path loss, reordering and duplicates per peer (wireguard_peer_{lost,reordered,duplicate}
//! _messages_total) against the truth: the lab's relay drops, swaps and duplicates the
//! transport messages going to side a, counting what it did, while a pings b through the
//! tunnel; the collector on a counts the messages arriving from b. A forced handshake in the
//! middle starts a new session; one at the end settles the last window, so every drop is
//! counted (a drop is visible to a receiver once a later message of its session arrived:
//! see tests/src/impair.rs).

use std::time::Duration;

use wg_tests::{
    impair::{Impaired, Impairment},
    relay::Toward,
    Collector, Implementation, Lab, Metrics,
};

/// Lost, reordered, duplicate; and the handshakes a initiated.
fn path(m: &Metrics, lab: &Lab) -> [f64; 4] {
    let l = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())];
    let [lost, reordered, duplicate] = ["lost", "reordered", "duplicate"]
        .map(|what| m.get_or_zero(&format!("wireguard_peer_{what}_messages_total"), &l));
    let initiations = m.get_or_zero(
        "wireguard_messages_total",
        &[l[0], l[1], ("direction", "transmit"), ("type", "handshake_initiation")],
    );
    [lost, reordered, duplicate, initiations]
}

/// `n` pings from a to b, 5 ms apart: their replies are b's transport messages to a. Some
/// are lost on purpose, so ping's own verdict is not asked.
fn pings(lab: &Lab, n: u32) {
    let _ =
        lab.exec('a', "ping", &["-q", "-c", &n.to_string(), "-i", "0.005", "-W", "1", &lab.b.tunnel_v4.to_string()]);
}

/// a forgets its session with b: its next ping starts a handshake (a initiates with a new
/// index, and b's data to it starts at counter 0).
fn rekey(lab: &Lab) {
    lab.reset_peer('a').unwrap();
    pings(lab, 3);
}

/// Runs `how` over two sessions and settles the second; returns what the relay did and what
/// the collector counted (lost, reordered, duplicate) meanwhile.
fn impaired(implementation: Implementation, how: Impairment) -> (Impaired, [f64; 3]) {
    let lab = Lab::with_delay(implementation, Duration::from_millis(1)).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let before = path(&c.scrape().unwrap(), &lab);
    let relay = lab.relay().unwrap();
    relay.impair(Toward::A, how);
    pings(&lab, 300);
    rekey(&lab);
    pings(&lab, 300);
    relay.impair(Toward::A, Impairment::default());
    // The last session is settled by the next one, whose messages pass untouched.
    rekey(&lab);
    std::thread::sleep(Duration::from_millis(200));
    let after = path(&c.scrape().unwrap(), &lab);
    let done = relay.impaired(Toward::A);
    println!(
        "{implementation:?}: relay {done:?}, counted lost/reordered/duplicate {:?}",
        [0, 1, 2].map(|i| after[i] - before[i])
    );
    (done, [0, 1, 2].map(|i| after[i] - before[i]))
}

fn drops_are_counted_exactly(implementation: Implementation) {
    let (done, counted) = impaired(implementation, Impairment { drop_every: 7, ..Default::default() });
    assert!(done.dropped >= 60, "the relay dropped too few to show anything: {done:?}");
    assert_eq!(counted, [done.dropped as f64, 0.0, 0.0], "{done:?}");
}

fn swaps_and_duplicates_are_counted_exactly(implementation: Implementation) {
    let how = Impairment { swap_every: 5, duplicate_every: 11, ..Default::default() };
    let (done, counted) = impaired(implementation, how);
    assert!(done.swapped >= 40 && done.duplicated >= 30, "the relay did too little to show anything: {done:?}");
    assert_eq!(counted, [0.0, done.swapped as f64, done.duplicated as f64], "{done:?}");
}

#[test]
fn wireguard_go_drops_are_counted_exactly() {
    drops_are_counted_exactly(Implementation::WireguardGo);
}

#[test]
fn wireguard_go_swaps_and_duplicates_are_counted_exactly() {
    swaps_and_duplicates_are_counted_exactly(Implementation::WireguardGo);
}

#[test]
fn boringtun_drops_are_counted_exactly() {
    drops_are_counted_exactly(Implementation::Boringtun);
}

#[test]
fn boringtun_swaps_and_duplicates_are_counted_exactly() {
    swaps_and_duplicates_are_counted_exactly(Implementation::Boringtun);
}
