//! The endpoint's security, against real TLS handshakes (a CA made here with rcgen), real
//! bcrypt, and a real Prometheus.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use wg_tests::{lab::wait_until, netns, prometheus::Prometheus, scrape::http_get_with, Collector, Implementation, Lab};

const TOKEN: &str = "3f9c2a7be41d08c6a5f3e9b27d4c1a60";

/// A temporary directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("wg-web-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str, text: impl AsRef<[u8]>) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and what it signs.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Pki { ca_pem: cert.pem(), issuer: Issuer::new(p, key) }
    }

    /// (certificate PEM, key PEM) for `names` (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).map(|c| c.unwrap()).collect()
}

/// An HTTPS GET from inside `ns`: Ok((status line, body)) or the TLS error.
fn https_get(
    ns: &str,
    addr: SocketAddr,
    trust: &str,
    client: Option<(String, String)>,
    versions: &'static [&'static rustls::SupportedProtocolVersion],
    headers: &[(&str, &str)],
) -> Result<(String, String), String> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs(trust) {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            b.with_client_auth_cert(pem_certs(&cert), PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let req = headers
        .iter()
        .fold("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".to_string(), |r, (k, v)| {
            r + &format!("{k}: {v}\r\n")
        })
        + "\r\n";
    netns::within(ns, move || {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let conn = rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("127.0.0.1").unwrap().to_owned())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let r = (|| -> std::io::Result<String> {
            tls.write_all(req.as_bytes())?;
            let mut out = Vec::new();
            match tls.read_to_end(&mut out) {
                Ok(_) => {}
                // Servers may close without close_notify once they answered.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
                Err(e) => return Err(e),
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        })();
        Ok(r.map_err(|e| e.to_string()))
    })
    .unwrap()
    .map(|raw| {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        (head.lines().next().unwrap_or("").to_string(), body.to_string())
    })
}

const ADDR: &str = "127.0.0.1:9586";

#[test]
fn tls_server_and_client_certificates() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let dir = Dir::new("tls");
    let (pki, other) = (Pki::new("test CA"), Pki::new("another CA"));
    let (cert, key) = pki.leaf(&["127.0.0.1", "localhost"]);
    let web = dir.file(
        "web.yml",
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS13\n",
            dir.file("server.crt", cert),
            dir.file("server.key", key),
            dir.file("ca.crt", &pki.ca_pem)
        ),
    );
    let c = Collector::start(&lab.a.ns, &["--web.config.file", &web, "--web.listen-address", ADDR]).unwrap();
    let addr: SocketAddr = ADDR.parse().unwrap();
    let client = pki.leaf(&["prometheus"]);
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    let (tls13, tls12): (&'static [_], &'static [_]) = (&TLS13, &TLS12);

    // The right CA and a client certificate it signed: the metrics.
    let (status, body) = https_get(&lab.a.ns, addr, &pki.ca_pem, Some(client.clone()), tls13, &[]).unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("wireguard_device_info"));
    // A client that trusts another CA refuses the server.
    let e = https_get(&lab.a.ns, addr, &other.ca_pem, Some(client.clone()), tls13, &[]).unwrap_err();
    assert!(e.contains("UnknownIssuer") || e.contains("invalid peer certificate"), "{e}");
    // No client certificate, or one from another CA: refused by the server, for that reason.
    let e = https_get(&lab.a.ns, addr, &pki.ca_pem, None, tls13, &[]).unwrap_err();
    assert!(e.contains("CertificateRequired"), "{e}");
    let e = https_get(&lab.a.ns, addr, &pki.ca_pem, Some(other.leaf(&["mallory"])), tls13, &[]).unwrap_err();
    assert!(e.contains("UnknownCA") || e.contains("BadCertificate"), "{e}");
    // TLS 1.2 is refused when min_version is TLS13.
    let e = https_get(&lab.a.ns, addr, &pki.ca_pem, Some(client.clone()), tls12, &[]).unwrap_err();
    assert!(e.contains("ProtocolVersion"), "{e}");
    // Plain HTTP gets nothing either.
    assert!(c.scrape().is_err());
    // And after all of them the server still serves the right client.
    let (status, body) = https_get(&lab.a.ns, addr, &pki.ca_pem, Some(client), tls13, &[]).unwrap();
    assert!(status.contains("200") && body.contains("wireguard_device_info"), "{status}");
}

fn plain(ns: &str, headers: &[(&str, &str)], path: &str) -> (String, String) {
    let addr: SocketAddr = ADDR.parse().unwrap();
    let h: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let path = path.to_string();
    let (head, body) = netns::within(ns, move || {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http_get_with(addr, &path, &h)
    })
    .unwrap();
    (head.lines().next().unwrap().to_string(), body)
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[test]
fn basic_auth_bearer_tokens_health_and_rate_limit() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let dir = Dir::new("auth");
    let web = dir
        .file("web.yml", format!("basic_auth_users:\n  prometheus: {}\n", bcrypt::hash("correct horse", 6).unwrap()));
    let tokens = dir.file("tokens", format!("{TOKEN}\n"));
    let c = Collector::start(&lab.a.ns, &["--web.config.file", &web, "--web.bearer-token-file", &tokens]).unwrap();
    let ns = &lab.a.ns;
    assert!(plain(ns, &[("Authorization", &basic("prometheus", "correct horse"))], "/metrics").0.contains("200"));
    assert!(plain(ns, &[("Authorization", &basic("prometheus", "wrong horse"))], "/metrics").0.contains("401"));
    assert!(plain(ns, &[], "/metrics").0.contains("401"));
    assert!(plain(ns, &[("Authorization", &format!("Bearer {TOKEN}"))], "/metrics").0.contains("200"));
    assert!(plain(ns, &[("Authorization", "Bearer 3f9c2a7be41d08c6a5f3e9b27d4c1a61")], "/metrics").0.contains("401"));
    // The health endpoint needs nothing and says nothing.
    let (status, body) = plain(ns, &[], "/-/healthy");
    assert!(status.contains("200") && body == "OK\n", "{status} {body:?}");
    // A token in the URL is refused with the reason.
    let (status, body) = plain(ns, &[], &format!("/metrics?token={TOKEN}"));
    assert!(status.contains("400") && body.contains("not accepted"), "{status} {body}");
    // Failures are logged without the secret.
    let log = c.log_text();
    assert!(log.contains("authentication failed") && !log.contains("wrong horse") && !log.contains("d4c1a61"), "{log}");
    // After 10 failures from one address it is turned away, even with the right token.
    for _ in 0..10 {
        plain(ns, &[("Authorization", "Bearer nope-nope-nope-nope")], "/metrics");
    }
    assert!(plain(ns, &[("Authorization", &format!("Bearer {TOKEN}"))], "/metrics").0.contains("429"));
}

#[test]
fn settings_reload_without_a_restart_and_a_bad_file_keeps_the_old_ones() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let dir = Dir::new("reload");
    let tokens = dir.file("tokens", format!("{TOKEN}\n"));
    let mut c = Collector::start(&lab.a.ns, &["--web.bearer-token-file", &tokens]).unwrap();
    let ns = &lab.a.ns;
    let with = |t: &str| plain(ns, &[("Authorization", &format!("Bearer {t}"))], "/metrics").0;
    assert!(with(TOKEN).contains("200"));
    let new = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
    std::fs::write(&tokens, format!("{new}\n")).unwrap();
    // SIGHUP (a change would also be noticed within 2 s).
    unsafe { libc::kill(c.pid() as i32, libc::SIGHUP) };
    wait_until(Duration::from_secs(5), || with(new).contains("200")).unwrap();
    assert!(with(TOKEN).contains("401"));
    // A weak token file is refused: the new token keeps working.
    std::fs::write(&tokens, "admin\n").unwrap();
    unsafe { libc::kill(c.pid() as i32, libc::SIGHUP) };
    wait_until(Duration::from_secs(5), || c.log_text().contains("not reloaded")).unwrap();
    assert!(with(new).contains("200"));
    assert!(c.is_running());
}

/// `--redact all` reaches every output: the page in both formats, the state API, the live
/// page, and the log, where configuration changes of endpoints and allowed IPs are logged.
#[test]
fn redaction_reaches_every_output_and_the_log() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &["--redact", "all"]).unwrap();
    // A change of each kind it hides, made and taken back: both are logged.
    let key = lab.b.public_key.clone();
    let changes = [("10.200.0.2:51999", "10.99.0.2/32,10.99.0.77/32"), ("10.200.0.2:51820", "10.99.0.2/32")];
    for (n, (endpoint, ips)) in changes.into_iter().enumerate() {
        lab.wg('a', &["set", "{iface}", "peer", &key, "endpoint", endpoint, "allowed-ips", ips]).unwrap();
        // Seen: an endpoint and an allowed-IPs change logged.
        wait_until(Duration::from_secs(5), || c.log_text().matches("configuration changed").count() >= 2 * (n + 1))
            .unwrap();
    }
    let ns = &lab.a.ns;
    let outputs = [
        ("text page", plain(ns, &[], "/metrics").1),
        ("OpenMetrics page", plain(ns, &[("Accept", "application/openmetrics-text")], "/metrics").1),
        ("state API", plain(ns, &[], "/api/v1/state").1),
        ("live page", plain(ns, &[], "/").1),
        ("log", c.log_text()),
    ];
    assert!(outputs[0].1.contains("wireguard_peer_info") && outputs[2].1.contains(&key));
    let log = &outputs[4].1;
    assert_eq!(log.matches("configuration changed: (redacted)").count(), 4, "{log}");
    for (what, text) in &outputs {
        for leak in ["10.200.0.2", "10.99.0.2", "10.99.0.77", "fd99::2", "2:51820", ":51999"] {
            assert!(!text.contains(leak), "{leak} in the {what}:\n{text}");
        }
    }
}

#[test]
fn capabilities_are_reduced_after_start() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let c = Collector::start(&lab.a.ns, &[]).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string();
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
    let kept = format!("{:016x}", (1u64 << 12) | (1 << 38) | (1 << 39));
    assert_eq!(field("CapEff:"), kept);
    assert_eq!(field("CapPrm:"), kept);
    assert_eq!(field("CapBnd:"), kept);
    assert_eq!(field("CapInh:"), "0000000000000000");
    assert_eq!(field("CapAmb:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    // And it still works: it attached, and follows a device that comes back.
    assert!(c.scrape().unwrap().get("wireguard_device_info", &[("device", lab.a.iface.as_str())]).is_some());
}

/// A real Prometheus (Debian's) in the lab namespace scrapes the collector over TLS with a
/// bearer token from a credentials file: up = 1; with a wrong token: up = 0.
#[test]
fn a_real_prometheus_scrapes_with_tls_and_credentials_file() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let dir = Dir::new("prom");
    let pki = Pki::new("test CA");
    let (cert, key) = pki.leaf(&["127.0.0.1", "localhost"]);
    let ca = dir.file("ca.crt", &pki.ca_pem);
    let web = dir.file(
        "web.yml",
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            dir.file("s.crt", cert),
            dir.file("s.key", key)
        ),
    );
    let tokens = dir.file("tokens", format!("{TOKEN}\n"));
    let _c = Collector::start(
        &lab.a.ns,
        &["--web.config.file", &web, "--web.bearer-token-file", &tokens, "--web.listen-address", ADDR],
    )
    .unwrap();
    let good = dir.file("good.token", TOKEN);
    let bad = dir.file("bad.token", "0000111122223333444455556666777788");
    let job = |name: &str, token: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      server_name: localhost\n    authorization:\n      credentials_file: {token}\n    static_configs:\n      - targets: ['{ADDR}']\n"
        )
    };
    let config = dir.file(
        "prometheus.yml",
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}", job("good", &good), job("bad", &bad)),
    );
    let data = dir.0.join("data");
    let prom = Prometheus::start(&lab.a.ns, &config, &data);
    let up = |job: &str| prom.query(&format!("up{{job=\"{job}\"}}"));
    wait_until(Duration::from_secs(30), || up("good") == Some(1.0) && up("bad") == Some(0.0))
        .unwrap_or_else(|_| panic!("up: good {:?}, bad {:?}; prometheus log:\n{}", up("good"), up("bad"), prom.log()));
    let n = prom.query("count(wireguard_peer_info)");
    assert_eq!(n, Some(1.0));
}

/// `--web.allowed-clients`: on a dual-stack listener ([::]:9586), an IPv6 client (::1) and an
/// IPv4 one arriving IPv4-mapped (the peer over the tunnel) are answered; loopback IPv4 and
/// the peer over the underlay are refused with 403 on every route, /-/healthy too, before
/// any authentication. The page then counts each request by handler and code, their
/// durations, and the refusals by reason.
#[test]
fn allowed_clients_and_the_endpoint_s_own_metrics() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let args = ["--web.listen-address", "[::]:9586", "--web.insecure", "--web.allowed-clients", "::1,10.99.0.0/24"];
    let c = Collector::start(&lab.a.ns, &args).unwrap();
    let get = |ns: &str, addr: &str, path: &str| -> String {
        let (addr, path): (SocketAddr, String) = (addr.parse().unwrap(), path.to_string());
        let (head, _) = netns::within(ns, move || http_get_with(addr, &path, &[])).unwrap();
        head.lines().next().unwrap().to_string()
    };
    let (a, b) = (lab.a.ns.as_str(), lab.b.ns.as_str());
    assert!(get(a, "127.0.0.1:9586", "/metrics").contains("403"));
    assert!(get(a, "127.0.0.1:9586", "/-/healthy").contains("403"));
    assert!(get(a, "[::1]:9586", "/metrics").contains("200"));
    assert!(get(b, "10.99.0.1:9586", "/metrics").contains("200"), "the peer over the tunnel, IPv4-mapped");
    assert!(get(b, "10.200.0.1:9586", "/metrics").contains("403"), "the peer over the underlay");
    let body = netns::within(a, || wg_tests::scrape::http_get("[::1]:9586".parse()?, "/metrics")).unwrap();
    let m = wg_tests::Metrics::parse(&body).unwrap();
    let requests = |handler: &str, code: &str| {
        m.get("wireguard_collector_http_requests_total", &[("handler", handler), ("code", code)]).unwrap_or(0.0)
    };
    assert_eq!(
        [requests("metrics", "200"), requests("metrics", "403"), requests("healthy", "403")],
        [2.0, 2.0, 1.0],
        "{}",
        m.text
    );
    assert_eq!(m.get("wireguard_collector_http_refusals_total", &[("reason", "forbidden_client")]), Some(3.0));
    assert_eq!(m.get("wireguard_collector_http_request_duration_seconds_count", &[("handler", "metrics")]), Some(4.0));
    assert_eq!(c.log_text().matches("refused: not an allowed client").count(), 0, "logged at debug only");
}

/// The allowlist from the web configuration file, behind TLS, on an INTERFACE:PORT listener
/// (wg0's addresses only): over the tunnel, the peer's IPv6 address is let in and its IPv4
/// one gets 403 after the TLS handshake; the file changed and reloaded (SIGHUP) lets both in.
#[test]
fn allowed_clients_behind_tls_on_an_interface_listener() {
    let lab = Lab::new(Implementation::WireguardGo).unwrap();
    let dir = Dir::new("allow-tls");
    let pki = Pki::new("test CA");
    let (cert, key) = pki.leaf(&["127.0.0.1"]);
    let (cert, key) = (dir.file("server.crt", cert), dir.file("server.key", key));
    let config = |allowed: &str| {
        format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\nhttp_server_config:\n  allowed_clients: [{allowed}]\n")
    };
    let web = dir.file("web.yml", config("\"fd99::2\""));
    let listen = format!("{}:9586", lab.a.iface);
    let c =
        Collector::start(&lab.a.ns, &["--web.config.file", &web, "--web.listen-address", &listen, "--web.insecure"])
            .unwrap();
    let v6: SocketAddr = format!("[{}]:9586", lab.a.tunnel_v6).parse().unwrap();
    let v4: SocketAddr = format!("{}:9586", lab.a.tunnel_v4).parse().unwrap();
    let get = |addr| https_get(&lab.b.ns, addr, &pki.ca_pem, None, rustls::DEFAULT_VERSIONS, &[]).unwrap();
    let (status, body) = get(v6);
    assert!(status.contains("200") && body.contains("wireguard_device_info"), "{status}");
    let (status, body) = get(v4);
    assert!(status.contains("403") && body.contains("--web.allowed-clients"), "{status} {body}");
    std::fs::write(&web, config("\"fd99::2\", 10.99.0.2")).unwrap();
    netns::sh(&["kill", "-HUP", &c.pid().to_string()]).unwrap();
    wait_until(Duration::from_secs(5), || get(v4).0.contains("200")).unwrap();
}
