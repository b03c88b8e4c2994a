//! When WireGuard itself misbehaves, the page stays right. boringtun 0.7.1 answers
//! `wg set … persistent-keepalive 1` with "Protocol error" and from then on its UAPI socket
//! accepts connections but never answers: the collector must keep that device's peers on
//! every page with live eBPF counters, say how old WireGuard's state is, and leave a healthy
//! device beside it alone.

use std::time::{Duration, Instant};

use wg_tests::{lab::exclusive, lab::settled, Collector, EmptyNamespace, Implementation, Lab, Metrics};

const TX: &str = "wireguard_peer_transmit_packets_total";
const RX: &str = "wireguard_peer_receive_packets_total";

fn peer(lab: &Lab) -> [(&str, &str); 3] {
    [("device", &lab.a.iface), ("netns", &lab.a.ns), ("public_key", &lab.b.public_key)]
}

fn device(lab: &Lab) -> [(&str, &str); 2] {
    [("device", &lab.a.iface), ("netns", &lab.a.ns)]
}

#[test]
fn a_hung_boringtun_keeps_its_peers_on_the_page() {
    let _one_at_a_time = exclusive();
    let hung = Lab::new(Implementation::Boringtun).unwrap();
    let healthy = Lab::new(Implementation::WireguardGo).unwrap();
    let home = EmptyNamespace::new().unwrap();
    let c = Collector::start(&home.name, &["--netns", &hung.a.ns, "--netns", &healthy.a.ns]).unwrap();
    c.wait_for(Duration::from_secs(10), |m| m.get(TX, &peer(&hung)).is_some() && m.get(TX, &peer(&healthy)).is_some())
        .unwrap();
    let rx_bytes = c.scrape().unwrap().get("wireguard_peer_receive_bytes_total", &peer(&hung)).unwrap();

    // boringtun's own bug: this hangs its UAPI socket for good.
    let key = hung.b.public_key.clone();
    let _ = hung.exec('a', "timeout", &["5", "wg", "set", &hung.a.iface, "peer", &key, "persistent-keepalive", "1"]);
    // Its next reading times out once; from then on the page shows its last state.
    let (m, _) = c
        .wait_for(Duration::from_secs(10), |m| {
            m.get("wireguard_collector_device_reading_age_seconds", &device(&hung)).is_some_and(|a| a > 0.0)
        })
        .unwrap();
    assert!(m.get("wireguard_collector_errors_total", &[("source", "uapi")]).unwrap() >= 1.0);

    let counts = |m: &Metrics| -> Vec<f64> {
        [&hung, &healthy]
            .iter()
            .flat_map(|lab| [m.get_or_zero(TX, &peer(lab)), m.get_or_zero(RX, &peer(lab))])
            .collect()
    };
    let before = settled(|| counts(&c.scrape().unwrap())).unwrap();
    // What ping sent and got back: a hung boringtun passes no traffic either (its device
    // loop is stuck too), so its echo requests leave through the interface unanswered.
    let flood = |lab: &Lab, n: u32| -> [f64; 2] {
        let out = wg_tests::netns::cmd(&lab.a.ns, "ping")
            .args(["-c", &n.to_string(), "-i", "0.002", "-q", "10.99.0.2"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let stat = |what: &str| -> f64 {
            let at = text.find(what).unwrap_or_else(|| panic!("no {what:?} in {text}"));
            text[..at].trim_end().rsplit([' ', '\n']).next().unwrap().parse().unwrap()
        };
        [stat(" packets transmitted"), stat(" received")]
    };
    let sent_hung = flood(&hung, 500);
    let sent_healthy = flood(&healthy, 300);
    assert_eq!(sent_healthy, [300.0, 300.0]);

    // Every page while it hangs: the peer is there, its WireGuard bytes as last read, the
    // scrape not waiting on the device again.
    let mut took = Vec::new();
    for _ in 0..10 {
        let t0 = Instant::now();
        let m = c.scrape().unwrap();
        took.push(t0.elapsed());
        assert_eq!(m.get("wireguard_peers", &device(&hung)), Some(1.0), "{}", m.text);
        assert_eq!(m.get("wireguard_peer_receive_bytes_total", &peer(&hung)), Some(rx_bytes));
        assert_eq!(m.get("wireguard_collector_device_reading_age_seconds", &device(&healthy)), Some(0.0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = settled(|| counts(&c.scrape().unwrap())).unwrap();
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let want = [sent_hung[0], sent_hung[1], sent_healthy[0], sent_healthy[1]];
    assert_eq!(delta, want, "tx/rx across the hung boringtun, then the healthy wireguard-go, as ping counted them");
    assert_eq!(sent_hung[0], 500.0);
    took.sort();
    let age = c.scrape().unwrap().get("wireguard_collector_device_reading_age_seconds", &device(&hung)).unwrap();
    println!("scrapes while boringtun hangs: median {:?}, slowest {:?}; its state {age:.1} s old", took[5], took[9]);
    // A background reading is outstanding or times out on its own: no scrape waits a whole
    // timeout (2 s) for it.
    assert!(took[9] < Duration::from_secs(2), "{took:?}");
}
