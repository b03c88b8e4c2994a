//! `--compat prometheus-wireguard-exporter` beside the real prometheus_wireguard_exporter
//! (crates.io, `cargo xtask setup` installs it) on one wireguard-go device: every series it
//! serves, by family and label set, is on our page with the same value.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use wg_tests::{
    lab::{settled, terminate, tool, wait_until},
    netns,
    scrape::{http_get, Sample},
    Collector, Implementation, Lab, Metrics,
};

/// The exporter in the lab's namespace, on `iface` only (`-i`).
struct Exporter(Child);

impl Exporter {
    fn start(ns: &str, iface: &str, conf: &str, extra: &[&str]) -> Self {
        let bin = tool("prometheus_wireguard_exporter").unwrap();
        let child = netns::cmd(ns, &bin)
            .args(["-l", "127.0.0.1", "-p", "9587", "-i", iface, "-n", conf])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Exporter(child);
        let ns2 = ns.to_string();
        wait_until(Duration::from_secs(10), || {
            netns::within(&ns2, || Ok(std::net::TcpStream::connect("127.0.0.1:9587")?)).is_ok()
        })
        .expect("prometheus_wireguard_exporter did not listen");
        e
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

fn scrape_exporter(ns: &str) -> Metrics {
    let body = netns::within(ns, || http_get("127.0.0.1:9587".parse()?, "/metrics")).unwrap();
    Metrics::parse(&body).unwrap()
}

/// A series: its name, its labels sorted, its value.
type Series = (String, Vec<(String, String)>, f64);

/// The page's series of `families`, sorted.
fn series(m: &Metrics, families: &[&str]) -> Vec<Series> {
    let mut v: Vec<_> = m
        .samples
        .iter()
        .filter(|s: &&Sample| families.contains(&s.name.as_str()))
        .map(|s| {
            let mut l = s.labels.clone();
            l.sort();
            (s.name.clone(), l, s.value)
        })
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

#[test]
fn every_series_of_prometheus_wireguard_exporter_is_on_our_page() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    // Three more peers: several allowed IPs of both families; none at all; a named one.
    let (_, kc) = lab.keypair("c").unwrap();
    let (_, kd) = lab.keypair("d").unwrap();
    lab.wg('a', &["set", "{iface}", "peer", &kc, "allowed-ips", "10.99.0.3/32,fd00::3/128,10.97.0.0/16"]).unwrap();
    lab.wg('a', &["set", "{iface}", "peer", &kd]).unwrap();
    let dir = std::env::temp_dir().join(format!("{}-compat", lab.a.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("wg0.conf");
    std::fs::write(
        &conf,
        format!(
            "[Interface]\nListenPort = 51820\n\n[Peer]\n# friendly_name = side b\nPublicKey = {}\nAllowedIPs = 10.99.0.2/32\n\n[Peer]\n# friendly_name = carol\nPublicKey = {kc}\nAllowedIPs = 10.99.0.3/32\n",
            lab.b.public_key
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_string();
    lab.exec('a', "ping", &["-c", "5", "-i", "0.05", &lab.b.tunnel_v4.to_string()]).unwrap();
    let families = [
        "wireguard_sent_bytes_total",
        "wireguard_received_bytes_total",
        "wireguard_latest_handshake_seconds",
        "wireguard_latest_handshake_delay_seconds",
    ];
    // Plain, then with the exporter's -s -r -d and our flags for them.
    let variants: [(&[&str], &[&str]); 2] = [
        (&[], &[]),
        (
            &["-s", "true", "-r", "true", "-d", "true"],
            &["--compat.separate-allowed-ips", "--compat.remote-ip-port", "--compat.handshake-delay"],
        ),
    ];
    let mut failures = Vec::new();
    for (theirs, ours) in variants {
        if !theirs.is_empty() {
            // The exporter's -s fails on a peer without allowed IPs ("(none)" has no prefix
            // length): d gets one for this run.
            lab.wg('a', &["set", "{iface}", "peer", &kd, "allowed-ips", "10.99.0.4/32"]).unwrap();
        }
        let exporter = Exporter::start(&lab.a.ns, &lab.a.iface, &conf, theirs);
        let mut args =
            vec!["--compat", "prometheus-wireguard-exporter", "--names.wg-config", &conf, "--device", &lab.a.iface];
        args.extend(ours);
        let c = Collector::start(&lab.a.ns, &args).unwrap();
        // No traffic flows now (no keepalives in the lab): both read the same counters.
        let (want, got) =
            settled(|| (series(&scrape_exporter(&lab.a.ns), &families), series(&c.scrape().unwrap(), &families)))
                .unwrap();
        println!("prometheus_wireguard_exporter {theirs:?} / wg-collector {ours:?}:");
        for (name, labels, value) in &want {
            let keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
            let mine = got.iter().find(|(n, l, _)| n == name && l == labels);
            println!(
                "  {name} {{{}}} {value} — ours: {}",
                keys.join(","),
                mine.map_or("MISSING".into(), |m| m.2.to_string())
            );
            // The delay is computed at each scrape, a second apart at most.
            let tolerance = if name.ends_with("delay_seconds") { 1.0 } else { 0.0 };
            match mine {
                Some(m) if (m.2 - value).abs() <= tolerance => {}
                _ => failures.push(format!("{theirs:?}: {name} {labels:?} = {value}: ours {mine:?}")),
            }
        }
        // Three families a peer (four with -d), three peers.
        assert_eq!(want.len(), 3 * if theirs.is_empty() { 3 } else { 4 }, "the exporter's series: {want:?}");
        assert_eq!(got.len(), want.len(), "ours has more series than the exporter: {got:?}");
        drop((exporter, c));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
