//! Exact counts through real tunnels: wireguard-go and boringtun peers in namespaces, the
//! real collector attached to side a, traffic from side a to side b.

use std::{process::Stdio, time::Duration};

use wg_tests::{
    lab::{settled, wait_until},
    netns, Collector, Implementation, Lab, Metrics,
};

/// Everything one peer's series say, read from one scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct PeerView {
    rx_packets: f64,
    tx_packets: f64,
    rx_payload: f64,
    tx_payload: f64,
    wg_rx_bytes: f64,
    wg_tx_bytes: f64,
}

impl PeerView {
    fn read(m: &Metrics, device: &str, key: &str) -> Self {
        let l = [("device", device), ("public_key", key)];
        let get = |name: &str| m.get(name, &l).unwrap_or_else(|| panic!("{name} {l:?} missing:\n{}", m.text));
        Self {
            rx_packets: get("wireguard_peer_receive_packets_total"),
            tx_packets: get("wireguard_peer_transmit_packets_total"),
            rx_payload: get("wireguard_peer_receive_payload_bytes_total"),
            tx_payload: get("wireguard_peer_transmit_payload_bytes_total"),
            wg_rx_bytes: get("wireguard_peer_receive_bytes_total"),
            wg_tx_bytes: get("wireguard_peer_transmit_bytes_total"),
        }
    }

    fn minus(self, o: Self) -> Self {
        Self {
            rx_packets: self.rx_packets - o.rx_packets,
            tx_packets: self.tx_packets - o.tx_packets,
            rx_payload: self.rx_payload - o.rx_payload,
            tx_payload: self.tx_payload - o.tx_payload,
            wg_rx_bytes: self.wg_rx_bytes - o.wg_rx_bytes,
            wg_tx_bytes: self.wg_tx_bytes - o.wg_tx_bytes,
        }
    }
}

/// What WireGuard sends for one data packet carrying `ip_len` plaintext bytes: 16 bytes of
/// header (type, receiver index, counter), the plaintext padded to a multiple of 16 (but
/// not past the MTU), and a 16-byte tag. See README, "Byte counters".
fn wg_data_bytes(ip_len: u64, mtu: u64) -> u64 {
    let padded = ip_len.div_ceil(16) * 16;
    32 + padded.min(mtu.max(ip_len))
}

fn view(c: &Collector, lab: &Lab) -> PeerView {
    PeerView::read(&c.scrape().unwrap(), &lab.a.iface, &lab.b.public_key)
}

/// WireGuard's own byte counter for `packets` IP packets of `ip_len` bytes each.
///
/// wireguard-go counts what goes on the wire: each data message (see [`wg_data_bytes`]),
/// plus any keepalive (32 bytes, at most one per 10 s of one-way traffic) in the window; no
/// handshake falls in a window this short (rekey is after 120 s). boringtun counts the
/// plaintext: exactly the IP bytes, keepalives being empty.
fn assert_wg_bytes(imp: Implementation, what: &str, got: f64, packets: u64, ip_len: u64) {
    match imp {
        Implementation::WireguardGo | Implementation::Kernel => {
            let data = packets * wg_data_bytes(ip_len, 1420);
            let extra = got as i64 - data as i64;
            assert!(
                extra >= 0 && extra % 32 == 0 && extra <= 64,
                "{what}: wireguard-go counted {got}, data messages make {data}"
            );
        }
        Implementation::Boringtun => {
            assert_eq!(got, (packets * ip_len) as f64, "{what}: boringtun counts plaintext bytes")
        }
    }
}

fn pings_are_counted_exactly(imp: Implementation) {
    let lab = Lab::new(imp).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let m = c.scrape().unwrap();
    assert_eq!(
        m.get("wireguard_device_info", &[("device", &lab.a.iface), ("implementation", imp.label())]),
        Some(1.0),
        "{}",
        m.text
    );

    // IPv4: 100 echo requests of 56 data bytes: 84-byte IP packets each way.
    let before = view(&c, &lab);
    lab.exec('a', "ping", &["-c", "100", "-i", "0.002", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let d = view(&c, &lab).minus(before);
    assert_eq!((d.tx_packets, d.rx_packets), (100.0, 100.0), "{d:?}");
    assert_eq!((d.tx_payload, d.rx_payload), (8400.0, 8400.0), "{d:?}");
    assert_wg_bytes(imp, "tx", d.wg_tx_bytes, 100, 84);
    assert_wg_bytes(imp, "rx", d.wg_rx_bytes, 100, 84);

    // IPv6: 50 echo requests of 1000 data bytes: 40 + 8 + 1000 = 1048-byte packets.
    let before = view(&c, &lab);
    lab.exec('a', "ping", &["-6", "-c", "50", "-i", "0.002", "-q", "-s", "1000", &lab.b.tunnel_v6.to_string()])
        .unwrap();
    let d = view(&c, &lab).minus(before);
    assert_eq!((d.tx_packets, d.rx_packets), (50.0, 50.0), "{d:?}");
    assert_eq!((d.tx_payload, d.rx_payload), (50.0 * 1048.0, 50.0 * 1048.0), "{d:?}");
    assert_wg_bytes(imp, "tx", d.wg_tx_bytes, 50, 1048);
    assert_wg_bytes(imp, "rx", d.wg_rx_bytes, 50, 1048);

    let m = c.scrape().unwrap();
    assert_eq!(m.get("wireguard_collector_errors_total", &[("source", "uapi")]), Some(0.0));
    assert_eq!(m.get("wireguard_collector_errors_total", &[("source", "bpf")]), Some(0.0));
}

/// A TCP bulk transfer: every segment the sender's TCP put on the wire (its SNMP OutSegs
/// and RetransSegs, which count GSO segments) is one transmitted packet on the peer's
/// series, and every segment it received (InSegs) one received packet.
fn bulk_transfer_is_counted_exactly(imp: Implementation) {
    let lab = Lab::new(imp).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let mut server = netns::cmd(&lab.b.ns, "iperf3")
        .args(["-s", "-1", "-B", &lab.b.tunnel_v4.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let b = lab.b.tunnel_v4.to_string();
    // Wait for the server's socket (probing it with a connection would count segments).
    wait_until(Duration::from_secs(5), || {
        lab.exec('b', "ss", &["-Htln", "sport = :5201"]).is_ok_and(|o| !o.trim().is_empty())
    })
    .unwrap();

    let _load = wg_tests::lab::exclusive();
    let before = view(&c, &lab);
    // The scrape's own loopback TCP connection counts in SNMP too: read once it has closed.
    let snmp = || {
        let f = |f| lab.snmp('a', "Tcp", f).unwrap();
        (f("OutSegs"), f("RetransSegs"), f("InSegs"))
    };
    let (out0, re0, in0) = settled(snmp).unwrap();
    lab.exec('a', "iperf3", &["-c", &b, "-n", "30M", "-l", "64K"]).unwrap();
    // The last segments of the connections' teardown (the server's FIN and its ACK) may leave
    // after iperf3 exits, and more than 100 ms later when the server is slow to exit: wait
    // for the server to exit and for both sides to hold no connection of the test but in
    // TIME-WAIT (which sends nothing more), then read both sides once they have come to rest
    // (SNMP first, as a scrape adds loopback segments to it but none to the tunnel's counters).
    let _ = server.wait();
    let open = |side| {
        let filter = ["-Htan", "state", "connected", "exclude", "time-wait", "( sport = :5201 or dport = :5201 )"];
        lab.exec(side, "ss", &filter).map(|o| o.trim().to_string())
    };
    wait_until(Duration::from_secs(10), || {
        open('a').is_ok_and(|o| o.is_empty()) && open('b').is_ok_and(|o| o.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}: connections still open: {:?} {:?}", open('a'), open('b')));
    let (out1, re1, in1) = settled(snmp).unwrap();
    let d = settled(|| view(&c, &lab)).unwrap().minus(before);

    let sent = (out1 - out0) + (re1 - re0);
    let received = in1 - in0;
    println!("{imp:?}: TCP sent {sent} segments, received {received}; eBPF {d:?}");
    assert_eq!(d.tx_packets, sent as f64, "transmitted packets vs TCP segments sent");
    assert_eq!(d.rx_packets, received as f64, "received packets vs TCP segments received");
    assert!(d.tx_payload > 30.0 * 1024.0 * 1024.0, "{d:?}");
    // WireGuard counts a packet only once it has sent (or received) it; one it drops inside
    // (a full queue, a failed send) we saw on wg0 and it did not. TCP sends each lost segment
    // again, so on the sending side the bytes WireGuard did not count are at most the
    // retransmitted segments' (each at most one MTU of plaintext + 47 bytes of overhead).
    let retrans = (re1 - re0) as f64;
    let dropped_max = [retrans * (1420.0 + 47.0), 0.0];
    for (i, (what, wg, payload, packets)) in
        [("tx", d.wg_tx_bytes, d.tx_payload, d.tx_packets), ("rx", d.wg_rx_bytes, d.rx_payload, d.rx_packets)]
            .into_iter()
            .enumerate()
    {
        let (low, high) = match imp {
            // Plaintext + 32 per message + padding to 16 (0..15 per packet) + keepalives.
            Implementation::WireguardGo | Implementation::Kernel => {
                (payload + 32.0 * packets, payload + 47.0 * packets + 64.0)
            }
            // The plaintext itself.
            Implementation::Boringtun => (payload, payload),
        };
        let low = low - dropped_max[i];
        assert!(
            wg >= low && wg <= high,
            "{what}: {imp:?} counted {wg}, outside [{low}, {high}] ({retrans} retransmits; {d:?})"
        );
    }
}

#[test]
fn wireguard_go_pings_are_counted_exactly() {
    pings_are_counted_exactly(Implementation::WireguardGo);
}

#[test]
fn boringtun_pings_are_counted_exactly() {
    pings_are_counted_exactly(Implementation::Boringtun);
}

#[test]
fn wireguard_go_bulk_transfer_is_counted_exactly() {
    bulk_transfer_is_counted_exactly(Implementation::WireguardGo);
}

#[test]
fn boringtun_bulk_transfer_is_counted_exactly() {
    bulk_transfer_is_counted_exactly(Implementation::Boringtun);
}
