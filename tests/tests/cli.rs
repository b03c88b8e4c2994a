//! The collector refuses to start, with a message naming the problem, when it cannot work.

use std::process::Command;

use wg_tests::collector::binary;

fn run_refused(prefix: &[&str], args: &[&str]) -> String {
    let bin = binary().unwrap();
    let mut c = if prefix.is_empty() { Command::new(&bin) } else { Command::new(prefix[0]) };
    if !prefix.is_empty() {
        c.args(&prefix[1..]).arg(&bin);
    }
    let out = c.args(args).output().unwrap();
    assert!(!out.status.success(), "{c:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn names_the_missing_capabilities() {
    // As root, but with every capability dropped from the bounding set.
    let err = run_refused(&["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"], &[]);
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
        assert!(err.contains(cap), "{err}");
    }
    // Only CAP_NET_ADMIN dropped.
    let err = run_refused(&["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"], &[]);
    assert!(err.contains("missing privileges: CAP_NET_ADMIN") && !err.contains("CAP_BPF"), "{err}");
}

#[test]
fn refuses_bad_flags_naming_them() {
    let err = run_refused(&[], &["--web.telemetry-path", "metrics"]);
    assert!(err.contains("--web.telemetry-path \"metrics\""), "{err}");
    let err = run_refused(&[], &["--web.listen-address", "nonsense"]);
    assert!(err.contains("--web.listen-address") && err.contains("nonsense"), "{err}");
    let err = run_refused(&[], &["--poll-interval", "0"]);
    assert!(err.contains("--poll-interval 0"), "{err}");
    let err = run_refused(&[], &["--latency.max-pending", "1000"]);
    assert!(err.contains("--latency.max-pending 1000: must be a power of two"), "{err}");
}

#[test]
fn refuses_a_malformed_names_file_naming_the_line() {
    let path = std::env::temp_dir().join(format!("wg-names-{}", std::process::id()));
    std::fs::write(&path, "# ok\nYP71z9BXGlz4MpombpSi3sh8/Z7J253dfEJPD5nDWy8= alice\nbob-without-key\n").unwrap();
    let err = run_refused(&[], &["--names.file", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains(&format!("{}:3: not a WireGuard public key", path.display())), "{err}");
}

#[test]
fn refuses_an_open_non_loopback_listener_and_weak_tokens() {
    let err = run_refused(&[], &["--web.listen-address", "0.0.0.0:9586"]);
    assert!(
        err.contains("not a loopback address, and no authentication is configured") && err.contains("--web.insecure"),
        "{err}"
    );
    let path = std::env::temp_dir().join(format!("wg-weak-token-{}", std::process::id()));
    std::fs::write(&path, "admin\n").unwrap();
    let err = run_refused(&[], &["--web.bearer-token-file", path.to_str().unwrap()]);
    std::fs::write(&path, "").unwrap();
    let empty = run_refused(&[], &["--web.bearer-token-file", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("line 1: a well-known default token"), "{err}");
    assert!(empty.contains("no token in it"), "{empty}");
}

#[test]
fn version_names_the_commit_and_the_map_layout() {
    let out = Command::new(binary().unwrap()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    let layout = format!("eBPF map layout {:#x}", wg_common::pinning::layout());
    assert!(
        v.starts_with(&format!("wg-collector {} (commit ", env!("CARGO_PKG_VERSION"))) && v.contains(&layout),
        "{v}"
    );
}
