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

/// A UAPI socket that answers half and closes, answers garbage, trickles or hangs (the
/// fake-uapi binary: a fake, as a real daemon does so only when broken) for a device in the
/// collector's namespace: every failed reading is counted by its kind, the device's peer is on
/// every page with its last state, and 1,000 failed readings leave the collector's fds where
/// they were.
#[test]
fn a_misbehaving_uapi_socket_is_counted_by_kind_and_loses_nothing() {
    let _one_at_a_time = exclusive();
    let ns = EmptyNamespace::new().unwrap();
    let iface = format!("{}f", ns.name);
    wg_tests::netns::sh(&["ip", "-n", &ns.name, "tuntap", "add", "dev", &iface, "mode", "tun"]).unwrap();
    let socket = format!("{}/{iface}.sock", wg_tests::lab::UAPI_DIR);
    let plan = "good:1,half:500,garbage:500,slow:2,hang:1";
    let log = std::env::temp_dir().join(format!("{iface}-fake.log"));
    let mut fake = wg_tests::netns::cmd(&ns.name, env!("CARGO_BIN_EXE_fake-uapi"))
        .args([&socket, plan])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _cleanup = Cleanup(vec![socket.clone(), log.display().to_string()]);
    wg_tests::lab::wait_until(Duration::from_secs(5), || std::path::Path::new(&socket).exists()).unwrap();

    let c = Collector::start(&ns.name, &["--poll-interval", "0.05"]).unwrap();
    let dev = [("device", iface.as_str())];
    let peer = [dev[0], ("public_key", "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=")];
    let (m, _) = c.wait_for(Duration::from_secs(10), |m| m.get("wireguard_peers", &dev) == Some(1.0)).unwrap();
    assert_eq!(m.get("wireguard_device_info", &[dev[0], ("implementation", "fake-uapi")]), Some(1.0), "{}", m.text);
    let fds = c.quiet_fds();

    // Scrapes (each a refresh: each a reading) until the plan is through.
    let started = Instant::now();
    let mut pages = 0;
    while !std::fs::read_to_string(&log).unwrap().contains("plan done") {
        assert!(started.elapsed() < Duration::from_secs(120), "the plan did not finish");
        let m = c.scrape().unwrap();
        assert_eq!(m.get("wireguard_peers", &dev), Some(1.0), "{}", m.text);
        assert_eq!(m.get("wireguard_peer_receive_bytes_total", &peer), Some(1000.0));
        pages += 1;
    }
    // Good answers again: the state is fresh.
    let (m, _) = c
        .wait_for(Duration::from_secs(10), |m| {
            m.get("wireguard_collector_device_reading_age_seconds", &dev) == Some(0.0)
        })
        .unwrap();
    let kind = |k: &str| m.get_or_zero("wireguard_collector_device_read_errors_total", &[dev[0], ("kind", k)]);
    let counted = [kind("truncated"), kind("malformed"), kind("timeout"), kind("io")];
    println!("{pages} pages in {:.1?}; read errors truncated/malformed/timeout/io: {counted:?}", started.elapsed());
    assert_eq!(counted, [500.0, 500.0, 3.0, 0.0]);
    assert_eq!(m.get("wireguard_collector_errors_total", &[("source", "uapi")]), Some(1003.0));
    let after = c.quiet_fds();
    assert_eq!(after.0, fds.0, "fds before {:?}, after 1,003 failed readings {:?}", fds.1, after.1);
    wg_tests::lab::terminate(&mut fake);
}

/// Removes the files it names when dropped.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}
