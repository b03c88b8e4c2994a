//! Many gateways, one place: three lab gateways, each with its collector and a Prometheus in
//! agent mode that remote-writes to one central Prometheus and to InfluxDB 1.6 (Debian's,
//! through its /api/v1/prom/write). The central store must hold every gateway's exact ping
//! counts, answer every panel of the fleet dashboard, and InfluxQL must return the same
//! counts. All on loopback of this host: the agents reach each collector through a forwarder
//! into its lab's namespace.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use wg_tests::{
    lab::{settled, terminate, wait_until},
    netns,
    prometheus::encode,
    Collector, Implementation, Lab,
};

/// A free port on this host's loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.0 request on loopback; the body of a 2xx answer.
fn http(method: &str, port: u16, path: &str) -> Option<String> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.split_whitespace().nth(1)?.starts_with('2').then(|| body.to_string())
}

/// A server process of this test, stopped on drop; its log kept in its folder.
struct Server {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Server {
    fn start(what: &str, cmd: &mut Command, dir: &Path, ready: impl Fn() -> bool) -> Self {
        let log = dir.join(format!("{what}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap();
        let s = Server { child, what: what.into(), log };
        wait_until(Duration::from_secs(30), ready).unwrap_or_else(|_| panic!("{} did not start:\n{}", s.what, s.log()));
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The values of an instant query of the central Prometheus, by the labels asked for.
fn query(port: u16, q: &str) -> Option<Vec<(String, f64)>> {
    let body = http("GET", port, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    Some(
        result
            .iter()
            .filter_map(|r| {
                Some((
                    r["metric"]["instance"].as_str().unwrap_or("").to_string(),
                    r["value"][1].as_str()?.parse().ok()?,
                ))
            })
            .collect(),
    )
}

#[test]
fn three_gateways_reach_a_central_prometheus_and_influxdb_with_exact_counts() {
    let dir = std::env::temp_dir().join(format!("wg-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pings = [10u32, 20, 30];

    // InfluxDB 1.6 on loopback, its data in the test's folder.
    let influx_port = free_port();
    let influx_conf = dir.join("influxdb.conf");
    std::fs::write(
        &influx_conf,
        format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{}\"\n[meta]\n  dir = \"{d}/meta\"\n[data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n[http]\n  bind-address = \"127.0.0.1:{influx_port}\"\n  log-enabled = false\n",
            free_port(),
            d = dir.display()
        ),
    )
    .unwrap();
    let influx = Server::start("influxd", Command::new("influxd").arg("-config").arg(&influx_conf), &dir, || {
        http("GET", influx_port, "/ping").is_some()
    });
    http("POST", influx_port, "/query?q=CREATE%20DATABASE%20wg").expect("CREATE DATABASE wg");

    // The central Prometheus, taking remote writes.
    let central_port = free_port();
    // It runs the recording rules and alerts, as a central store does.
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/alerts.yml");
    std::fs::write(
        dir.join("central.yml"),
        format!("global: {{evaluation_interval: 1s}}\nrule_files: ['{}']\n", rules.canonicalize().unwrap().display()),
    )
    .unwrap();
    let central = Server::start(
        "central",
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("central.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("central").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{central_port}"))
            .arg("--web.enable-remote-write-receiver"),
        &dir,
        || query(central_port, "vector(1)").is_some(),
    );

    // Three gateways: a lab, its collector, a forwarder into its namespace, its agent.
    let mut gateways = Vec::new();
    for (i, n) in pings.iter().enumerate() {
        let name = format!("gw{}", i + 1);
        let lab = Lab::new(Implementation::WireguardGo).unwrap();
        let c = Collector::start(&lab.a.ns, &[]).unwrap();
        let fwd = netns::forward("127.0.0.1:0".parse().unwrap(), &lab.a.ns, "127.0.0.1:9586".parse().unwrap()).unwrap();
        let agent_port = free_port();
        let conf = dir.join(format!("{name}.yml"));
        std::fs::write(
            &conf,
            format!(
                "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: wireguard\n    static_configs:\n      - targets: ['{fwd}']\n        labels: {{instance: {name}}}\nremote_write:\n  - url: http://127.0.0.1:{central_port}/api/v1/write\n    queue_config: {{batch_send_deadline: 1s}}\n  - url: http://127.0.0.1:{influx_port}/api/v1/prom/write?db=wg\n    queue_config: {{batch_send_deadline: 1s}}\n"
            ),
        )
        .unwrap();
        let agent = Server::start(
            &format!("agent-{name}"),
            Command::new("prometheus")
                .arg("--enable-feature=agent")
                .arg(format!("--config.file={}", conf.display()))
                .arg(format!("--storage.agent.path={}", dir.join(format!("{name}-wal")).display()))
                .arg(format!("--web.listen-address=127.0.0.1:{agent_port}")),
            &dir,
            || http("GET", agent_port, "/-/ready").is_some(),
        );
        gateways.push((name, *n, lab, c, agent));
    }

    // Each gateway pings its peer a different number of times.
    let tx = |c: &Collector, lab: &Lab| {
        c.scrape()
            .unwrap()
            .get("wireguard_peer_transmit_packets_total", &[("public_key", lab.b.public_key.as_str())])
            .unwrap()
    };
    let mut expected = Vec::new();
    for (name, n, lab, c, _) in &gateways {
        let before = settled(|| tx(c, lab)).unwrap();
        lab.exec('a', "ping", &["-c", &n.to_string(), "-i", "0.02", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
        let after = settled(|| tx(c, lab)).unwrap();
        assert_eq!(after - before, *n as f64, "{name}: the collector's own count");
        expected.push((name.clone(), lab.b.public_key.clone(), after));
    }

    // The central Prometheus: each gateway's latest value is the collector's, exactly.
    for (name, key, want) in &expected {
        let q = format!("wireguard_peer_transmit_packets_total{{instance=\"{name}\", public_key=\"{key}\"}}");
        wait_until(Duration::from_secs(30), || {
            query(central_port, &q).is_some_and(|v| v.len() == 1 && v[0].1 == *want)
        })
        .unwrap_or_else(|_| panic!("central: {q} = {:?}, want {want}\n{}", query(central_port, &q), central.log()));
    }
    // Every panel of the fleet dashboard answers on the central store, a row per gateway.
    let fleet: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/fleet.json")).unwrap(),
    )
    .unwrap();
    for p in fleet["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let q = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
                .replace("$device", ".*");
            // Rates need two samples of each gateway in the window: the last one joined late.
            let instances = || {
                let mut got: Vec<String> =
                    query(central_port, &q).unwrap_or_default().into_iter().map(|(i, _)| i).collect();
                got.sort();
                got.dedup();
                got
            };
            wait_until(Duration::from_secs(30), || instances() == ["gw1", "gw2", "gw3"])
                .unwrap_or_else(|_| panic!("{}: {q} answers for {:?}", p["title"], instances()));
        }
    }

    // InfluxDB: the same counts through InfluxQL.
    for (name, key, want) in &expected {
        let q = format!(
            "SELECT last(\"value\") FROM \"wireguard_peer_transmit_packets_total\" WHERE \"instance\" = '{name}' AND \"public_key\" = '{key}'"
        );
        let path = format!("/query?db=wg&q={}", encode(&q));
        let read = || -> Option<f64> {
            let v: Value = serde_json::from_str(&http("GET", influx_port, &path)?).ok()?;
            v["results"][0]["series"][0]["values"][0][1].as_f64()
        };
        wait_until(Duration::from_secs(30), || read() == Some(*want))
            .unwrap_or_else(|_| panic!("InfluxDB: {q} = {:?}, want {want}\n{}", read(), influx.log()));
    }
    drop(gateways);
    drop((central, influx));
    std::fs::remove_dir_all(&dir).unwrap();
}
