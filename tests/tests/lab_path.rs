//! Path loss, reordering and duplicates per peer (wireguard_peer_{lost,reordered,duplicate}
//! _messages_total) against the truth: the lab's relay drops, swaps and duplicates the
//! transport messages going to side a, counting what it did, while a pings b through the
//! tunnel; the collector on a counts the messages arriving from b. A forced handshake in the
//! middle starts a new session; one at the end settles the last window, so every drop is
//! counted (a drop is visible to a receiver once a later message of its session arrived:
//! see tests/src/impair.rs). The kernel-WireGuard VM suite runs the same (vm-suite.rs).

use std::time::Duration;

use wg_tests::{
    impair::{over_two_sessions, Impairment, Outcome},
    Collector, Implementation, Lab,
};

fn run(implementation: Implementation, how: Impairment) -> Outcome {
    let lab = Lab::with_delay(implementation, Duration::from_millis(1)).unwrap();
    // Reading only when scraped: boringtun's forced handshake removes the peer for a moment
    // (Lab::reset_peer), and a reading then would start its counts afresh.
    let c = Collector::start(&lab.a.ns, &["--poll-interval", "3600"]).unwrap();
    let o = over_two_sessions(&lab, &c, how, 300).unwrap();
    println!("{implementation:?}: {o:?}");
    o
}

fn drops_are_counted_exactly(implementation: Implementation) {
    let o = run(implementation, Impairment { drop_every: 7, ..Default::default() });
    assert!(o.done.dropped >= 60, "the relay dropped too few to show anything: {o:?}");
    assert_eq!(o.counted, [o.done.dropped as f64, 0.0, 0.0], "{o:?}");
}

fn swaps_and_duplicates_are_counted_exactly(implementation: Implementation) {
    let o = run(implementation, Impairment { swap_every: 5, duplicate_every: 11, ..Default::default() });
    assert!(o.done.swapped >= 40 && o.done.duplicated >= 30, "the relay did too little to show anything: {o:?}");
    assert_eq!(o.counted, [0.0, o.done.swapped as f64, o.done.duplicated as f64], "{o:?}");
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
