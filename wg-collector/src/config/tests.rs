//! Each flag: its default, a value taken, a value refused with the flag named.

use std::time::Duration;

use clap::Parser;

use super::*;
use crate::histogram::{Buckets, DEFAULT_BUCKETS, DEFAULT_SCHEMA};

fn config(flags: &[&str]) -> Result<Config, String> {
    let args = Args::try_parse_from(std::iter::once("wg-collector").chain(flags.iter().copied()))
        .map_err(|e| e.to_string())?;
    Config::try_from(args).map_err(|e| e.to_string())
}

fn refused(flags: &[&str]) -> String {
    config(flags).err().unwrap_or_else(|| panic!("{flags:?} was taken"))
}

#[test]
fn version_names_the_commit_and_the_map_layout() {
    let v = version();
    assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
    assert!(v.contains(&format!("eBPF map layout {:#x}", wg_common::pinning::layout())), "{v}");
    let commit = v.split("commit ").nth(1).and_then(|r| r.split(',').next()).unwrap();
    assert!(commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{v}");
}

#[test]
fn defaults() {
    let c = config(&[]).unwrap();
    assert_eq!(c.web.listen, None);
    assert_eq!(c.web.telemetry_path, "/metrics");
    assert!(!c.web.insecure);
    assert_eq!(c.poll_interval, Duration::from_secs(1));
    assert_eq!(c.scrape_max_age, Duration::ZERO);
    assert_eq!(c.refresh.pending_ttl, Duration::from_secs(5));
    assert_eq!(c.refresh.uapi_dir, std::path::PathBuf::from("/var/run/wireguard"));
    assert_eq!(c.refresh.probe.max_peers, wg_common::DEFAULT_MAX_PEERS);
    assert_eq!(c.refresh.probe.max_pending, wg_common::DEFAULT_MAX_PENDING);
    assert_eq!(c.refresh.probe.latency_sample, 1);
    assert!(c.refresh.probe.delay);
    // One source for the bucket list: the flag's default is the constant.
    assert_eq!(c.export.buckets, Buckets::Classic(DEFAULT_BUCKETS.to_vec()));
    assert_eq!(c.export.max_series, crate::metrics::DEFAULT_MAX_SERIES);
    assert!(!c.export.redact_endpoints && !c.export.redact_allowed_ips);
    assert!(!c.export.peer_name_label);
    assert_eq!(c.export.up_after, Duration::from_secs(180));
    assert_eq!(c.pin, PinRequest::default());
    assert!(!c.unpin && !c.bpf_stats);
    assert_eq!(c.web.files.timeout_flags, TimeoutSettings::default(), "unset: the file's, else the defaults");
    assert_eq!(c.web.caps, crate::http::conn::DEFAULT_CAPS);
}

#[test]
fn connection_timeouts_and_caps() {
    let c = config(&[
        "--web.read-header-timeout",
        "3s",
        "--web.idle-timeout",
        "1m30s",
        "--web.write-timeout",
        "45",
        "--web.max-connections",
        "100",
        "--web.max-connections-per-client",
        "10",
    ])
    .unwrap();
    assert_eq!(
        c.web.files.timeout_flags,
        TimeoutSettings {
            read_header: Some(Duration::from_secs(3)),
            idle: Some(Duration::from_secs(90)),
            write: Some(Duration::from_secs(45))
        }
    );
    assert_eq!(c.web.caps, Caps { total: 100, per_client: 10 });
    let err = refused(&["--web.read-header-timeout", "soon"]);
    assert!(err.contains("--web.read-header-timeout") && err.contains("not a duration"), "{err}");
    assert!(refused(&["--web.idle-timeout", "0s"]).contains("above zero"));
    assert_eq!(refused(&["--web.max-connections", "0"]), "--web.max-connections 0: must be at least 1");
    assert_eq!(
        refused(&["--web.max-connections", "10", "--web.max-connections-per-client", "11"]),
        "--web.max-connections-per-client 11: must be between 1 and --web.max-connections"
    );
}

#[test]
fn telemetry_path() {
    assert_eq!(config(&["--web.telemetry-path", "/x/metrics"]).unwrap().web.telemetry_path, "/x/metrics");
    for bad in ["metrics", "/", "/-/healthy"] {
        let err = refused(&["--web.telemetry-path", bad]);
        assert!(err.starts_with(&format!("--web.telemetry-path {bad:?}: must start with /")), "{err}");
    }
}

#[test]
fn durations() {
    let c = config(&["--poll-interval", "0.5", "--scrape.max-age", "2", "--latency.pending-ttl", "0.25"]).unwrap();
    assert_eq!(
        (c.poll_interval, c.scrape_max_age, c.refresh.pending_ttl),
        (Duration::from_millis(500), Duration::from_secs(2), Duration::from_millis(250))
    );
    assert_eq!(refused(&["--poll-interval", "0"]), "--poll-interval 0: must be between 0.05 and 3600 seconds");
    assert_eq!(refused(&["--poll-interval", "NaN"]), "--poll-interval NaN: must be between 0.05 and 3600 seconds");
    assert_eq!(refused(&["--scrape.max-age=-1"]), "--scrape.max-age -1: must be between 0 and 3600 seconds");
    assert_eq!(
        refused(&["--latency.pending-ttl", "4000"]),
        "--latency.pending-ttl 4000: must be between 0.1 and 3600 seconds"
    );
    assert!(refused(&["--poll-interval", "soon"]).contains("--poll-interval"));
}

#[test]
fn powers_of_two() {
    let c = config(&["--latency.sample", "8", "--latency.max-pending", "1024"]).unwrap();
    assert_eq!((c.refresh.probe.latency_sample, c.refresh.probe.max_pending), (8, 1024));
    assert_eq!(refused(&["--latency.sample", "3"]), "--latency.sample 3: must be a power of two (1, 2, 4, ...)");
    assert_eq!(refused(&["--latency.sample", "0"]), "--latency.sample 0: must be a power of two (1, 2, 4, ...)");
    assert_eq!(
        refused(&["--latency.max-pending", "1000"]),
        "--latency.max-pending 1000: must be a power of two (65536, 131072, ...)"
    );
}

#[test]
fn buckets() {
    let c = config(&["--latency.buckets", "0.001,0.01"]).unwrap();
    assert_eq!(c.export.buckets, Buckets::Classic(vec![0.001, 0.01]));
    assert_eq!(config(&["--latency.buckets", "full"]).unwrap().export.buckets, Buckets::Full);
    let err = refused(&["--latency.buckets", "0.01,0.001"]);
    assert!(err.contains("--latency.buckets") && err.contains("ascend"), "{err}");
}

#[test]
fn schema() {
    assert_eq!(config(&[]).unwrap().export.schema, DEFAULT_SCHEMA);
    assert_eq!(config(&["--latency.schema", "4"]).unwrap().export.schema.get(), 4);
    let err = refused(&["--latency.schema", "5"]);
    assert!(err.contains("--latency.schema") && err.contains("0 to 4"), "{err}");
}

#[test]
fn redaction() {
    let c = config(&["--redact", "endpoints"]).unwrap();
    assert!(c.export.redact_endpoints && !c.export.redact_allowed_ips);
    let c = config(&["--redact", "all"]).unwrap();
    assert!(c.export.redact_endpoints && c.export.redact_allowed_ips);
    assert!(refused(&["--redact", "keys"]).contains("--redact"));
}

#[test]
fn peer_names_and_up() {
    let c = config(&["--metrics.peer-name-label", "--peer.up-after", "5m"]).unwrap();
    assert!(c.export.peer_name_label);
    assert_eq!(c.export.up_after, Duration::from_secs(300));
    assert_eq!(config(&["--peer.up-after", "90"]).unwrap().export.up_after, Duration::from_secs(90));
    assert!(refused(&["--peer.up-after", "soon"]).contains("--peer.up-after"));
    assert!(refused(&["--peer.up-after", "0"]).contains("above zero"));
}

#[test]
fn compat() {
    assert_eq!(config(&[]).unwrap().export.compat, crate::metrics::Compat::default());
    let c = config(&[
        "--compat",
        "prometheus-wireguard-exporter",
        "--compat.separate-allowed-ips",
        "--compat.remote-ip-port",
    ])
    .unwrap();
    assert!(c.export.compat.on && c.export.compat.separate_allowed_ips && c.export.compat.remote_ip_port);
    assert!(!c.export.compat.handshake_delay);
    assert!(refused(&["--compat", "node-exporter"]).contains("--compat"));
    assert!(refused(&["--compat.handshake-delay"]).contains("--compat"), "needs --compat");
}

#[test]
fn pins() {
    let c = config(&["--bpf.pin-path", "/sys/fs/bpf/x", "--bpf.replace-pinned"]).unwrap();
    assert_eq!(c.pin, PinRequest { path: Some("/sys/fs/bpf/x".into()), off: false, replace: true });
    assert!(config(&["--bpf.no-pin"]).unwrap().pin.off);
    assert!(refused(&["--bpf.no-pin", "--bpf.pin-path", "/x"]).contains("cannot be used with"));
    assert!(refused(&["--bpf.unpin", "--bpf.no-pin"]).contains("cannot be used with"));
    assert!(config(&["--bpf.unpin"]).unwrap().unpin);
}

#[test]
fn listen_devices_names_and_sizes() {
    let c = config(&[
        "--web.listen-address",
        "127.0.0.1:9999",
        "--device",
        "wg0",
        "--device",
        "wg1",
        "--names.file",
        "/n",
        "--underlay",
        "eth0",
        "--bpf.max-peers",
        "100",
        "--metrics.max-series",
        "0",
        "--latency.no-delay",
        "--bpf.stats",
    ])
    .unwrap();
    assert_eq!(c.web.listen.map(|l| l.to_string()), Some("127.0.0.1:9999".into()));
    assert_eq!(c.refresh.devices, ["wg0", "wg1"]);
    assert_eq!(c.names.names_files, [std::path::PathBuf::from("/n")]);
    assert_eq!(c.refresh.underlays, Underlays::Named(vec!["eth0".into()]));
    assert_eq!(c.refresh.probe.max_peers, 100);
    assert_eq!(c.export.max_series, 0);
    assert!(!c.refresh.probe.delay && c.bpf_stats);
    assert!(refused(&["--web.listen-address", "nonsense"]).contains("--web.listen-address"));
    assert!(refused(&["--bpf.max-peers=-1"]).contains("--bpf.max-peers"));
}

#[test]
fn netns() {
    assert!(config(&[]).unwrap().refresh.netns.is_own_only());
    let c = config(&["--netns", "blue", "--netns", "/proc/1/ns/net", "--netns", "all"]).unwrap();
    assert!(c.refresh.netns.all);
    assert_eq!(c.refresh.netns.paths, [PathBuf::from("/run/netns/blue"), PathBuf::from("/proc/1/ns/net")]);
    assert_eq!(
        refused(&["--netns", "pods/blue"]),
        "--netns \"pods/blue\": neither all, a name under /run/netns, nor an absolute path"
    );
    assert!(refused(&["--netns", ""]).starts_with("--netns \"\": "));
}

#[test]
fn underlays() {
    let routed = config(&[]).unwrap();
    assert_eq!(routed.refresh.underlays, Underlays::Routed);
    assert!(routed.refresh.probe.delay && routed.export.underlay);
    let two = config(&["--underlay", "eth0", "--underlay", "eth1"]).unwrap();
    assert_eq!(two.refresh.underlays, Underlays::Named(vec!["eth0".into(), "eth1".into()]));
    // none: no programs there, so no pairing for encap/decap delay and no families of its own.
    let off = config(&["--underlay", "none"]).unwrap();
    assert_eq!(off.refresh.underlays, Underlays::Off);
    assert!(!off.refresh.probe.delay && !off.export.underlay);
    assert_eq!(
        refused(&["--underlay", "none", "--underlay", "eth0"]),
        "--underlay none,eth0: none cannot go with interfaces"
    );
}
