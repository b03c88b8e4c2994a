//! Tunnel round trips measured by the programs against a known truth: with no added delay
//! and with 10 ms added each way by the lab's relay, each method's median lies within 1 ms or
//! 5 % (whichever is larger) of what the probes themselves saw for the same packets: `ping`'s
//! own times for ICMP, the application's round trips for TCP timestamps, connect() times for
//! SYN → SYN-ACK.

use std::time::Duration;

use wg_tests::{
    tcp_ping::{self, median, EchoServer},
    Collector, Implementation, Lab, Metrics,
};

fn tolerance(truth: f64) -> f64 {
    (truth * 0.05).max(0.001)
}

/// ping's own per-packet times ("time=0.512 ms"), in seconds.
fn ping_times(output: &str) -> Vec<Duration> {
    output
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect()
}

fn check(m: &Metrics, lab: &Lab, method: &str, truth: f64, samples_at_least: f64) {
    let labels = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str()), ("method", method)];
    let (got, n) = m
        .quantile("wireguard_peer_latency_seconds", &labels, 0.5)
        .unwrap_or_else(|| panic!("no {method} samples:\n{}", m.text));
    println!("{method}: histogram median {:.3} ms over {n} samples, probe median {:.3} ms", got * 1e3, truth * 1e3);
    assert!(n >= samples_at_least, "{method}: {n} samples");
    assert!(
        (got - truth).abs() <= tolerance(truth),
        "{method}: histogram median {got} s vs {truth} s measured by the probe"
    );
}

fn round_trips_match_the_probes(delay: Duration) {
    let lab = if delay.is_zero() {
        Lab::new(Implementation::WireguardGo)
    } else {
        Lab::with_delay(Implementation::WireguardGo, delay)
    }
    .unwrap();
    let c = Collector::start(&lab.a.ns, &["--latency.buckets", "full"]).unwrap();

    // ICMP: ping's own times for the same packets.
    let out = lab.exec('a', "ping", &["-c", "40", "-i", "0.02", &lab.b.tunnel_v4.to_string()]).unwrap();
    let icmp_truth = median(&ping_times(&out));

    // TCP: an echo server on b, timed one-byte round trips and connects from a.
    let server = EchoServer::start(&lab.b.ns, format!("{}:7007", lab.b.tunnel_v4).parse().unwrap()).unwrap();
    let (rtts, connects) = tcp_ping::probe(&lab.a.ns, server.addr(), 40, 15, Duration::from_millis(20)).unwrap();

    let m = c.scrape().unwrap();
    check(&m, &lab, "icmp", icmp_truth, 40.0);
    check(&m, &lab, "tcp_ts", median(&rtts), 40.0);
    check(&m, &lab, "tcp_syn", median(&connects), 16.0);
    // The device-level histogram holds every peer's samples.
    let dev = [("device", lab.a.iface.as_str()), ("method", "icmp")];
    assert!(m.get("wireguard_device_latency_seconds_count", &dev).unwrap() >= 40.0);
    assert!(
        m.get(
            "wireguard_collector_latency_pending_evictions_total",
            &[("device", lab.a.iface.as_str()), ("reason", "displaced")]
        ) == Some(0.0)
    );
    if !delay.is_zero() {
        assert!(icmp_truth >= 2.0 * delay.as_secs_f64(), "the relay adds {delay:?} each way; ping saw {icmp_truth} s");
    }
}

#[test]
fn round_trips_match_the_probes_without_added_delay() {
    round_trips_match_the_probes(Duration::ZERO);
}

#[test]
fn round_trips_match_the_probes_with_10ms_each_way() {
    round_trips_match_the_probes(Duration::from_millis(10));
}

/// Handshake round trips, both roles, against the same truth: a handshake crosses the relay
/// once each way, like a ping.
#[test]
fn handshake_round_trips_match_the_injected_delay() {
    let delay = Duration::from_millis(10);
    let lab = Lab::with_delay(Implementation::WireguardGo, delay).unwrap();
    let c = Collector::start(&lab.a.ns, &["--latency.buckets", "full"]).unwrap();
    assert!(c.log_text().contains("underlay programs attached"), "{}", c.log_text());
    let out = lab.exec('a', "ping", &["-c", "20", "-i", "0.02", &lab.b.tunnel_v4.to_string()]).unwrap();
    let truth = median(&ping_times(&out));

    // Side a starts three handshakes (initiator), side b three more (a responds).
    for (side, target) in [('a', lab.b.tunnel_v4), ('b', lab.a.tunnel_v4)] {
        for _ in 0..3 {
            lab.reset_peer(side).unwrap();
            // A scrape syncs the maps: the re-added peer's endpoint is known before its
            // handshake (else that handshake counts for the device only).
            c.scrape().unwrap();
            lab.exec(side, "ping", &["-c", "1", "-W", "2", &target.to_string()]).unwrap();
        }
    }
    let m = c.scrape().unwrap();
    for role in ["initiator", "responder"] {
        let labels = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str()), ("role", role)];
        let (got, n) = m
            .quantile("wireguard_peer_handshake_rtt_seconds", &labels, 0.5)
            .unwrap_or_else(|| panic!("no {role} samples:\n{}", m.text));
        println!("handshake {role}: median {:.3} ms over {n}, ping median {:.3} ms", got * 1e3, truth * 1e3);
        assert_eq!(n, 3.0, "{role}");
        assert!((got - truth).abs() <= tolerance(truth), "{role}: {got} s vs ping's {truth} s");
    }
}

/// Every data packet that crossed gets an encap (out) or decap (in) sample: with nothing
/// lost, the sample counts equal the packet counters' increase exactly.
#[test]
fn every_packet_gets_an_encap_or_decap_sample() {
    for imp in [Implementation::WireguardGo, Implementation::Boringtun] {
        let lab = Lab::new(imp).unwrap();
        let c = Collector::start(&lab.a.ns, &[]).unwrap();
        let peer = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())];
        let read = |m: &Metrics| {
            [
                m.get_or_zero("wireguard_peer_encap_delay_seconds_count", &peer),
                m.get_or_zero("wireguard_peer_decap_delay_seconds_count", &peer),
                m.get("wireguard_peer_transmit_packets_total", &peer).unwrap(),
                m.get("wireguard_peer_receive_packets_total", &peer).unwrap(),
            ]
        };
        let before = read(&c.scrape().unwrap());
        lab.exec('a', "ping", &["-c", "100", "-i", "0.005", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
        lab.exec('a', "ping", &["-6", "-c", "50", "-i", "0.005", "-q", "-s", "1200", &lab.b.tunnel_v6.to_string()])
            .unwrap();
        let m = c.scrape().unwrap();
        let after = read(&m);
        let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        println!("{imp:?}: encap {} decap {} tx {} rx {}", d[0], d[1], d[2], d[3]);
        assert_eq!((d[2], d[3]), (150.0, 150.0), "{imp:?}");
        assert_eq!((d[0], d[1]), (d[2], d[3]), "{imp:?}: samples vs packets");
        let dev = [("device", lab.a.iface.as_str())];
        assert_eq!(m.get("wireguard_collector_delay_fifo_resyncs_total", &dev), Some(0.0), "{imp:?}");
        for fam in ["wireguard_peer_encap_delay_seconds", "wireguard_peer_decap_delay_seconds"] {
            let (median, _) = m.quantile(fam, &peer, 0.5).unwrap();
            println!("{imp:?}: {fam} median {:.1} µs", median * 1e6);
            assert!(median > 1e-6 && median < 0.005, "{imp:?} {fam}: {median} s");
        }
    }
}
