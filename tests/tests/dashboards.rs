//! The dashboards, the rules and the live page, proven against real things: promtool, a real
//! Prometheus scraping a lab, headless Chromium, systemd-analyze.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use wg_tests::{lab::wait_until, netns, prometheus::Prometheus, Collector, Implementation, Lab};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo().join("dashboards")).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    assert!(out.len() >= 5, "the fleet, overview, peer, protocol and collector dashboards");
    out
}

/// Every query of every panel, with the dashboard's variables filled in as Grafana would for
/// "All".
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let q = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "15s")
                    .replace("$instance", ".*")
                    .replace("$device", ".*")
                    .replace("$peer", ".*");
                out.push((format!("{file}: {}", p["title"].as_str().unwrap()), q));
            }
        }
    }
    out
}

fn sh(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{c:?} failed:\n{text}");
    text
}

#[test]
fn dashboards_are_importable_with_unique_ids_and_a_datasource_variable() {
    for (file, d) in dashboards() {
        assert!(d["uid"].is_string() && d["title"].is_string(), "{file}");
        let vars: Vec<&str> =
            d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert!(
            vars.contains(&"datasource") && vars.contains(&"instance") && vars.contains(&"device"),
            "{file}: variables {vars:?}"
        );
        let mut ids = std::collections::HashSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{file}: panel id {} twice", p["id"]);
            assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24, "{file}: {}", p["title"]);
            if p["type"] == "row" {
                continue;
            }
            let ds = &p["datasource"];
            assert_eq!(ds["uid"], "${datasource}", "{file}: panel {} has a fixed datasource", p["title"]);
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{file}: {}", p["title"]);
                assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{file}: variable {}", v["name"]);
        }
    }
}

/// Many gateways, one view: equal device names on different gateways never merge. Every
/// device selector is scoped by the gateway (instance), every aggregation and join that keeps
/// the device keeps the instance too; the recording rules and alerts likewise.
#[test]
fn every_query_keeps_gateways_apart() {
    let mut bad = Vec::new();
    let mut check = |what: &str, q: &str| {
        let unscoped = q.matches("device=~\"$device\"").count()
            != q.matches("instance=~\"$instance\", device=~\"$device\"").count();
        let merged = q
            .split("by (")
            .skip(1)
            .chain(q.split("on(").skip(1))
            .map(|rest| rest.split(')').next().unwrap_or(""))
            // Equal device names on two gateways, or in two namespaces of one (--netns).
            .any(|labels| labels.contains("device") && !labels.starts_with("instance, netns, "));
        if unscoped || merged {
            bad.push(format!("{what}: {q}"));
        }
    };
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                check(&format!("{file}: {}", p["title"]), t["expr"].as_str().unwrap());
            }
        }
    }
    let rules = std::fs::read_to_string(repo().join("dashboards/alerts.yml")).unwrap();
    for expr in rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")) {
        check("alerts.yml", expr);
    }
    assert!(bad.is_empty(), "queries that would merge gateways:\n{}", bad.join("\n"));
    // The fleet view links each gateway to its overview.
    let fleet = dashboards().into_iter().find(|(f, _)| f == "fleet.json").expect("dashboards/fleet.json").1;
    let links = fleet["panels"][0]["fieldConfig"]["defaults"]["links"][0]["url"].as_str().unwrap().to_string();
    assert!(links.starts_with("/d/wg-overview?var-instance=${__data.fields.instance}"), "{links}");
}

/// The deployment's Prometheus configurations are valid (the fleet test runs the same path).
#[test]
fn the_shipped_prometheus_configs_check() {
    let deploy = repo().join("wg-collector/deploy");
    for (file, agent) in
        [("prometheus-agent.yml", true), ("prometheus-central.yml", false), ("prometheus-scrape.yml", false)]
    {
        let mut c = Command::new("promtool");
        c.args(["check", "config", "--syntax-only"]);
        if agent {
            c.arg("--agent");
        }
        sh(c.arg(deploy.join(file)));
    }
}

#[test]
fn rules_check_and_every_alert_has_unit_tests_that_pass() {
    let dir = repo().join("dashboards");
    sh(Command::new("promtool").args(["check", "rules", "alerts.yml"]).current_dir(&dir));
    let out = sh(Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}")), "no unit test for {alert}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("wg-collector/deploy/wg-collector.service")).unwrap();
    // systemd-analyze checks that the binary exists: point it at the one we built.
    let bin = wg_tests::collector::binary().unwrap();
    let dir = std::env::temp_dir().join(format!("wg-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wg-collector.service");
    let exec = "ExecStart=/usr/bin/wg-collector ";
    assert!(unit.contains(exec), "the unit runs the packaged binary");
    std::fs::write(&path, unit.replace(exec, &format!("ExecStart={} ", bin.display()))).unwrap();
    // --man=no: the unit's man:wg-collector(1) comes with the package (the boot test installs it).
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A real Prometheus scrapes the lab every second with the rules loaded: every dashboard
/// query and every recording rule returns something; then one peer stops and the
/// stale-handshake alert fires (the same expression; only `for:` is shortened in the test's
/// copy).
#[test]
fn a_real_prometheus_answers_every_panel_and_the_stale_alert_fires() {
    let mut lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &["--bpf.stats"]).unwrap();
    let dir = std::env::temp_dir().join(format!("wg-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::fs::read_to_string(repo().join("dashboards/alerts.yml")).unwrap();
    let mut lines: Vec<String> = rules.lines().map(String::from).collect();
    let stale = lines.iter().position(|l| l.contains("alert: WireGuardHandshakeStale")).unwrap();
    let for_line = lines[stale..].iter().position(|l| l.trim().starts_with("for:")).unwrap() + stale;
    lines[for_line] = "        for: 0s".into();
    std::fs::write(dir.join("rules.yml"), lines.join("\n")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: wireguard\n    static_configs: [{{ targets: ['127.0.0.1:9586'] }}]\n",
            dir.join("rules.yml").display()
        ),
    )
    .unwrap();
    let config = dir.join("prometheus.yml");
    let prom = Prometheus::start(&lab.a.ns, config.to_str().unwrap(), &dir.join("data"));
    // And one that scrapes native histograms (protobuf): no `le`, `_sum` or `_count` series of
    // histograms there, so every histogram query must also read the native one.
    let native = Prometheus::start_with(
        &lab.a.ns,
        config.to_str().unwrap(),
        &dir.join("native"),
        9091,
        &["--enable-feature=native-histograms"],
    );

    // Traffic of every kind the panels show: a handshake, pings, a TCP exchange, junk.
    lab.reset_peer('a').unwrap();
    c.scrape().unwrap();
    let target = lab.b.tunnel_v4.to_string();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        lab.exec('a', "ping", &["-c", "10", "-i", "0.1", "-q", &target]).unwrap();
    }
    let empty = |p: &Prometheus, q: &str| p.query_all(q).is_none_or(|v| v.is_empty());
    let missing: Vec<String> = queries()
        .into_iter()
        .flat_map(|(panel, q)| [("classic", &prom), ("native", &native)].map(|(s, p)| (s, p, panel.clone(), q.clone())))
        .filter(|(_, p, _, q)| empty(p, q))
        .map(|(server, _, panel, q)| format!("{server}: {panel}: {q}"))
        .collect();
    let records: Vec<String> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- record: ")).map(String::from).collect();
    // A record of `le` buckets is the classic fallback: empty where histograms are native.
    let empty_records: Vec<String> = records
        .iter()
        .flat_map(|r| [("classic", &prom), ("native", &native)].map(|(s, p)| (s, p, r)))
        .filter(|(s, p, r)| empty(p, r) && !(*s == "native" && r.contains("_bucket")))
        .map(|(s, _, r)| format!("{s}: {r}"))
        .collect();
    assert!(missing.is_empty(), "panels without data:\n{}", missing.join("\n"));
    assert!(empty_records.is_empty(), "recording rules without data: {empty_records:?}");
    assert!(records.len() >= 4);
    // The native server holds the kernel's buckets: one series per histogram, schema 3.
    assert_eq!(native.query_all("wireguard_peer_latency_seconds_bucket"), Some(vec![]));
    assert!(!empty(&native, "histogram_count(wireguard_peer_latency_seconds)"));
    drop(native);

    // Side b stops: a's last handshake ages past 180 s and the alert fires.
    let handshake =
        prom.query(&format!("wireguard_latest_handshake_seconds{{public_key=\"{}\"}}", lab.b.public_key)).unwrap();
    lab.stop_daemon('b').unwrap();
    let firing = format!(
        "ALERTS{{alertname=\"WireGuardHandshakeStale\", alertstate=\"firing\", public_key=\"{}\"}}",
        lab.b.public_key
    );
    assert_eq!(prom.query_all(&firing), Some(vec![]), "not firing yet");
    wait_until(Duration::from_secs(240), || prom.query(&firing) == Some(1.0))
        .unwrap_or_else(|_| panic!("the alert did not fire:\n{}", prom.log()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(now - handshake > 180.0, "fired {} s after the last handshake", now - handshake);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The live page in headless Chromium shows the lab's peers and a latency chart with
/// samples; the screenshot is kept (target/live-page.png).
#[test]
fn the_live_page_shows_the_peers_and_a_latency_chart() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    lab.exec('a', "ping", &["-c", "20", "-i", "0.02", "-q", &lab.b.tunnel_v4.to_string()]).unwrap();
    let host = netns::forward("127.0.0.1:0".parse().unwrap(), &lab.a.ns, "127.0.0.1:9586".parse().unwrap()).unwrap();
    let url = format!("http://{host}/");
    let profile = std::env::temp_dir().join(format!("wg-chromium-{}", std::process::id()));
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1100,520",
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium (cargo xtask setup installs it)")
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    let shot = repo().join("target/live-page.png");
    let out = chromium(&[&format!("--screenshot={}", shot.display())]);
    let _ = std::fs::remove_dir_all(&profile);
    assert!(dom.contains(&lab.a.iface) && dom.contains(&lab.b.public_key[..12]), "{dom}");
    assert!(dom.contains("data-peers=\"1\""), "{dom}");
    let samples: u64 =
        dom.split("data-samples=\"").nth(1).and_then(|s| s.split('"').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(samples >= 20, "latency chart with {samples} samples:\n{dom}");
    // The peer's p50 and p99 as the state API has them (the native histogram's quantiles).
    let state: Value = serde_json::from_str(&c.get("/api/v1/state", &[]).unwrap().1).unwrap();
    for q in ["p50", "p99"] {
        let s = state["devices"][0]["peers"][0]["latency"][q].as_f64().unwrap();
        let shown = if s < 0.01 { format!("{:.2} ms", s * 1e3) } else { format!("{:.1} ms", s * 1e3) };
        assert!(dom.contains(&format!("class=\"num {q}\">{shown}<")), "{q} {shown} not shown:\n{dom}");
    }
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    drop(c);
}
