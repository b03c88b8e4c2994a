//! Native histograms end to end, against the truth: the relay holds every transport message
//! toward b for a known spread on top of 1 ms each way, ping prints every packet's round
//! trip, and two real Prometheus servers scrape the collector: one with native histograms
//! (protobuf, the kernel's buckets at schema 3), one without (the classic `le` buckets).
//! `histogram_quantile` of the native histogram must lie within one schema-3 bucket of
//! ping's own quantile; the classic one is printed beside it, to show what it costs.

use std::time::{Duration, Instant};

use wg_tests::{
    impair::{Impairment, Jitter},
    prometheus::Prometheus,
    relay::Toward,
    Collector, Implementation, Lab,
};

const PINGS: usize = 300;

/// ping's round trips, in seconds.
fn ping_times(output: &str) -> Vec<f64> {
    output
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .collect()
}

/// The q-quantile of sorted values: the smallest with at least q of them at or below it.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn within_the_deadline<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn against_the_truth(shape: &str, jitter: Jitter) {
    let lab = Lab::with_delay(Implementation::WireguardGo, Duration::from_millis(1)).unwrap();
    lab.relay().unwrap().impair(Toward::B, Impairment { jitter, ..Default::default() });
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let config = lab.dir().join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wireguard\n    static_configs: [{ targets: ['127.0.0.1:9586'] }]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let native = Prometheus::start_with(
        &lab.a.ns,
        config,
        &lab.dir().join("native"),
        9090,
        &["--enable-feature=native-histograms"],
    );
    let classic = Prometheus::start_with(&lab.a.ns, config, &lab.dir().join("classic"), 9091, &[]);

    // 50 ms apart: wider than the spread, so no message waits behind another in the relay.
    let out = lab.exec('a', "ping", &["-c", &PINGS.to_string(), "-i", "0.05", &lab.b.tunnel_v4.to_string()]).unwrap();
    let mut truth = ping_times(&out);
    assert_eq!(truth.len(), PINGS, "{out}");
    truth.sort_by(f64::total_cmp);

    // Both servers have scraped every sample (the ICMP histogram counts each echo answered).
    let icmp = r#"wireguard_peer_latency_seconds{method="icmp"}"#;
    let n = PINGS as f64;
    within_the_deadline("the native histogram's count", || {
        (native.query(&format!("histogram_count({icmp})")) == Some(n)).then_some(())
    });
    within_the_deadline("the classic histogram's count", || {
        (classic.query(r#"wireguard_peer_latency_seconds_count{method="icmp"}"#) == Some(n)).then_some(())
    });

    // One bucket of schema 3: a factor 2^(1/8) either way. ping's time also holds the way
    // through its socket to the tunnel and back, which the tunnel's samples do not: up to
    // 0.1 ms more (lab_latency measures it).
    let bucket = 2f64.powf(1.0 / 8.0);
    for q in [0.5, 0.9, 0.99] {
        let t = quantile(&truth, q);
        let nat = native.query(&format!("histogram_quantile({q}, {icmp})")).unwrap();
        let cla = classic
            .query(&format!(r#"histogram_quantile({q}, wireguard_peer_latency_seconds_bucket{{method="icmp"}})"#))
            .unwrap();
        println!(
            "| {shape} | p{} | {:.2} ms | {:.2} ms ({:+.1} %) | {:.2} ms ({:+.1} %) |",
            q * 100.0,
            t * 1e3,
            nat * 1e3,
            (nat / t - 1.0) * 100.0,
            cla * 1e3,
            (cla / t - 1.0) * 100.0
        );
        assert!(nat >= (t - 0.0001) / bucket && nat <= t * bucket, "{shape} p{q}: native {nat} s, truth {t} s");
    }

    // The collector's own state API reads the same buckets as Prometheus does.
    let (_, body) = c.get("/api/v1/state", &[]).unwrap();
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let peer = &state["devices"][0]["peers"][0];
    for (field, q) in [("p50", 0.5), ("p99", 0.99)] {
        let own = peer["latency"][field].as_f64().unwrap();
        let prom = native.query(&format!("histogram_quantile({q}, {icmp})")).unwrap();
        assert!((own - prom).abs() <= 1e-9 * prom, "{shape}: state {field} {own} s, Prometheus {prom} s");
    }

    // Every encap and decap sample reached both servers: the native count is the classic.
    for family in ["wireguard_peer_encap_delay_seconds", "wireguard_peer_decap_delay_seconds"] {
        let own = within_the_deadline(family, || {
            let peer = [("device", lab.a.iface.as_str()), ("public_key", lab.b.public_key.as_str())];
            let own = c.scrape().ok()?.get(&format!("{family}_count"), &peer)?;
            let nat = native.query(&format!("sum(histogram_count({family}))"))?;
            let cla = classic.query(&format!("sum({family}_count)"))?;
            (nat == own && cla == own).then_some(own)
        });
        assert!(own >= n, "{family}: {own} samples for {PINGS} pings");
    }
}

#[test]
fn native_quantiles_of_a_uniform_spread_are_within_a_bucket_of_the_truth() {
    against_the_truth("uniform 0-20 ms", Jitter::Uniform { max: Duration::from_millis(20) });
}

#[test]
fn native_quantiles_of_a_bimodal_mix_are_within_a_bucket_of_the_truth() {
    // Every fifth message 30 ms late, the others 2 ms: p50 in one mode, p90 and p99 in the other.
    let jitter = Jitter::Bimodal { low: Duration::from_millis(2), high: Duration::from_millis(30), high_every: 5 };
    against_the_truth("bimodal 2 ms / 30 ms", jitter);
}
