//! The page of a reading built in memory against the golden files: catalogue and encoding, byte for byte.
use std::io::Read;

use super::*;
use crate::fixture;

/// The page of the fixture's reading; the reading's age (a clock) is the one value
/// written as AGE.
pub(super) fn page(opts: &ExportOptions, format: Format) -> String {
    let body = encode(Page::new(fixture::snapshot(), opts, fixture::conns()), format).unwrap();
    let text = match format.encoding {
        Encoding::Gzip => {
            let mut s = String::new();
            flate2::read::MultiGzDecoder::new(&body.to_vec()[..]).read_to_string(&mut s).unwrap();
            s
        }
        Encoding::Zstd => String::from_utf8(zstd::stream::decode_all(&body.to_vec()[..]).unwrap()).unwrap(),
        Encoding::Identity => String::from_utf8(body.to_vec()).unwrap(),
    };
    text.lines()
        .map(|l| match l.strip_prefix("wireguard_collector_reading_age_seconds ") {
            Some(_) => "wireguard_collector_reading_age_seconds AGE".to_string(),
            None => l.to_string(),
        })
        .map(|l| l + "\n")
        .collect()
}

/// Compares with tests/golden/NAME; UPDATE_GOLDEN=1 writes it instead.
fn golden(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(got == want, "the page differs from {}; diff it with UPDATE_GOLDEN=1 and git diff", path.display());
}

#[test]
fn the_page_of_a_fixed_reading_is_the_golden_one() {
    let text = Format::TEXT;
    golden("page.prom", &page(&ExportOptions::default(), text));
    // Gzip and zstd are the same page, compressed.
    for encoding in [Encoding::Gzip, Encoding::Zstd] {
        assert_eq!(page(&ExportOptions::default(), Format { encoding, ..text }), page(&ExportOptions::default(), text));
    }
}

/// prometheus_wireguard_exporter's families as it writes them (its output format is in its
/// own tests; the lab test compares with the real exporter): the compat families alone here,
/// plain and with every option.
#[test]
fn the_compat_families_are_the_golden_ones() {
    let text = Format::TEXT;
    let only_compat = |page: String| -> String {
        let mut keep = false;
        page.lines()
            .filter(|l| {
                if let Some(rest) = l.strip_prefix("# HELP ") {
                    keep = ["wireguard_sent_bytes", "wireguard_received_bytes", "wireguard_latest_handshake"]
                        .iter()
                        .any(|n| rest.starts_with(n));
                }
                keep
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let plain = Compat { on: true, ..Compat::default() };
    golden("compat.prom", &only_compat(page(&ExportOptions { compat: plain, ..ExportOptions::default() }, text)));
    let all = Compat { on: true, separate_allowed_ips: true, remote_ip_port: true, handshake_delay: true };
    golden("compat-all.prom", &only_compat(page(&ExportOptions { compat: all, ..ExportOptions::default() }, text)));
}

#[test]
fn the_redacted_trimmed_openmetrics_page_is_the_golden_one() {
    let opts =
        ExportOptions { redact_endpoints: true, redact_allowed_ips: true, max_series: 90, ..ExportOptions::default() };
    golden(
        "page-redacted-trimmed.om",
        &page(&opts, Format { exposition: Exposition::OpenMetrics, encoding: Encoding::Identity }),
    );
}

/// Every family the fixture's page shows is in the catalogue with its type, and every
/// sample carries exactly the labels the catalogue says (histograms add `le`); the page
/// shows every family of the catalogue.
#[test]
fn the_page_is_the_catalogue() {
    let text = page(&ExportOptions::default(), Format::TEXT);
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            typed.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let series = line.rsplit_once(' ').unwrap().0;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let family = families()
            .find(|f| {
                let exposed = f.exposed_name();
                name == exposed
                    || (f.kind == Type::Histogram
                        && ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{exposed}{s}")))
            })
            .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        let mut keys: Vec<&str> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| l.split('=').next().unwrap())
            .collect();
        keys.retain(|k| *k != "le");
        assert_eq!(keys, family.labels, "labels of {line}");
    }
    // Every family but prometheus_wireguard_exporter's (--compat, off by default).
    let catalogue: Vec<(String, String)> = GROUPS
        .iter()
        .filter(|g| g.name != "compat")
        .flat_map(|g| g.families)
        .map(|f| (f.exposed_name(), f.kind.label().to_string()))
        .collect();
    assert_eq!(typed, catalogue, "the page's families, in order, are the catalogue's");
}

/// The README's table of families, made from the catalogue.
fn readme_table() -> String {
    let mut t =
        String::from("| group | family | type | labels | what and how (its HELP text) |\n|---|---|---|---|---|\n");
    for g in &GROUPS {
        for f in g.families {
            let labels: Vec<String> = f.labels.iter().map(|l| format!("`{l}`")).collect();
            t += &format!(
                "| {} | `{}` | {} | {} | {} |\n",
                g.name,
                f.exposed_name(),
                f.kind.label(),
                labels.join(", "),
                f.help
            );
        }
    }
    t
}

/// The README shows the catalogue as it is; UPDATE_GOLDEN=1 writes it there.
#[test]
fn the_readme_table_is_the_catalogue() {
    const START: &str = "<!-- families: made from wg-collector/src/metrics by the_readme_table_is_the_catalogue -->\n";
    const END: &str = "<!-- end of families -->\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let a = readme.find(START).expect("the README has the families' start marker") + START.len();
    let b = readme[a..].find(END).expect("the README has the families' end marker") + a;
    let table = readme_table();
    if std::env::var_os("UPDATE_GOLDEN").is_some() && readme[a..b] != table {
        std::fs::write(&path, format!("{}{table}{}", &readme[..a], &readme[b..])).unwrap();
        return;
    }
    assert!(readme[a..b] == table, "README.md's table differs from the catalogue: run the test with UPDATE_GOLDEN=1");
}

/// With --metrics.max-series, the per-peer samples of the page (those with a public key)
/// stay within the budget, peers are left out whole, and the omitted count says how many.
#[test]
fn a_trimmed_page_stays_within_its_budget() {
    // The device's own key is on wireguard_device_info; the device's messages have an empty one.
    let per_peer_samples = |text: &str| {
        let peer = |l: &&str| l.contains("public_key=\"") && !l.contains("public_key=\"\"");
        text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("wireguard_device_info")).filter(peer).count()
    };
    let full = per_peer_samples(&page(&ExportOptions::default(), Format::TEXT));
    let snap = fixture::snapshot();
    let peers: usize = snap.devices.iter().map(|d| d.state.peers.len()).sum();
    for budget in [1, 6, 40, 81, 82, 90, 120, 125, full - 1, full] {
        let opts = ExportOptions { max_series: budget, ..ExportOptions::default() };
        let text = page(&opts, Format::TEXT);
        let shown = per_peer_samples(&text);
        assert!(shown <= budget, "budget {budget}: {shown} per-peer samples");
        let omitted: usize = text
            .lines()
            .filter_map(|l| l.strip_prefix("wireguard_collector_peers_omitted{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<usize>().unwrap())
            .sum();
        let on_page = text.lines().filter(|l| l.starts_with("wireguard_peer_info{")).count();
        assert_eq!(on_page + omitted, peers, "budget {budget}");
        if budget == full {
            assert_eq!((shown, omitted), (full, 0));
        }
    }
}

/// With --metrics.peer-name-label the page is the default one with `name="…"` after every
/// `public_key` label (the peer's name from wireguard_peer_info, empty without one), except
/// on wireguard_peer_info, which has its name already.
#[test]
fn the_peer_name_label_goes_on_every_per_peer_series() {
    let text = Format::TEXT;
    let plain = page(&ExportOptions::default(), text);
    let named = page(&ExportOptions { peer_name_label: true, ..ExportOptions::default() }, text);
    // A label's value as written (escapes kept), and where the label ends.
    let value = |line: &str, label: &str| -> Option<(usize, String)> {
        let at = line.find(&format!("{label}=\""))? + label.len() + 2;
        let mut escaped = false;
        let len = line[at..].char_indices().find_map(|(i, c)| match c {
            '"' if !escaped => Some(i),
            _ => {
                escaped = c == '\\' && !escaped;
                None
            }
        })?;
        Some((at + len + 1, line[at..at + len].to_string()))
    };
    let names: std::collections::HashMap<String, String> = plain
        .lines()
        .filter(|l| l.starts_with("wireguard_peer_info{"))
        .map(|l| (value(l, "public_key").unwrap().1, value(l, "name").unwrap().1))
        .collect();
    assert!(names.values().any(|n| !n.is_empty()), "the fixture names some peers");
    // A line of a per-peer family (wireguard_device_info has a public_key too: the device's).
    let per_peer = |line: &str| {
        families().any(|f| {
            f.per_peer.is_some()
                && line.strip_prefix(f.exposed_name().as_str()).is_some_and(|r| r.starts_with(['{', '_']))
        })
    };
    let expected: Vec<String> = plain
        .lines()
        .map(|l| match value(l, "public_key") {
            Some((end, key)) if per_peer(l) && !l.starts_with("wireguard_peer_info{") && !l.starts_with('#') => {
                let name = names.get(&key).map_or("", String::as_str);
                format!("{},name=\"{name}\"{}", &l[..end], &l[end..])
            }
            _ => l.to_string(),
        })
        .collect();
    assert_eq!(named.lines().collect::<Vec<_>>(), expected);
}

/// Devices of another network namespace (`--netns`): every series of theirs that names the
/// device names the namespace right after it, compat families too; the collector's own
/// devices' series have no netns label (the golden page has none).
#[test]
fn devices_of_another_namespace_carry_netns() {
    let mut snap = crate::refresh::Snapshot::clone(&fixture::snapshot());
    for d in &mut snap.devices {
        d.found.netns = Some("blue".into());
    }
    for l in &mut snap.links {
        l.netns = Some("blue".into());
    }
    let opts =
        ExportOptions { compat: crate::metrics::Compat { on: true, ..Default::default() }, ..Default::default() };
    let body = encode(Page::new(std::sync::Arc::new(snap), &opts, fixture::conns()), Format::TEXT).unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut with_device = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        for name in ["device", "interface"] {
            if let Some(at) = line.find(&format!("{{{name}=\"")) {
                let rest = &line[at..];
                let first_end = rest.find("\",").map_or(rest.len(), |i| i + 2);
                assert!(rest[first_end..].starts_with("netns=\"blue\""), "{line}");
                with_device += 1;
            }
        }
    }
    assert!(with_device > 50, "{with_device} series name a device");
    let own = page(&opts, Format::TEXT);
    assert!(!own.contains("netns="), "the own namespace's devices have no netns label");
}

/// The protobuf page: every family of the text page, in its order, and histograms with the
/// kernel's buckets as native ones beside the same classic buckets.
#[test]
fn the_protobuf_page_carries_every_family_and_native_histograms() {
    use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model::MetricFamily;
    use prost::Message;

    let opts = ExportOptions::default();
    let format = Format { exposition: Exposition::Protobuf, encoding: Encoding::Identity };
    let body = encode(Page::new(fixture::snapshot(), &opts, fixture::conns()), format).unwrap().to_vec();
    let mut rest = &body[..];
    let mut families = Vec::new();
    while !rest.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut rest).unwrap());
    }
    let text = page(&opts, Format::TEXT);
    let text_names: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect();
    let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, text_names);

    let latency = families.iter().find(|f| f.name == "wireguard_peer_latency_seconds").unwrap();
    let tcp_ts = latency
        .metric
        .iter()
        .find(|m| m.label.iter().any(|l| l.name == "method" && l.value == "tcp_ts"))
        .and_then(|m| m.histogram.as_ref())
        .unwrap();
    // 0.3 ms, 0.45 ms and 2 ms (fixture.rs) at schema 3: indices ⌈8·log2 s⌉ = -93, -88, -71.
    assert_eq!((tcp_ts.schema, tcp_ts.sample_count, tcp_ts.zero_count), (3, 3, 0));
    assert_eq!(tcp_ts.zero_threshold, wg_common::buckets::ZERO_THRESHOLD_SECONDS);
    let spans: Vec<(i32, u32)> = tcp_ts.positive_span.iter().map(|s| (s.offset, s.length)).collect();
    assert_eq!(spans, vec![(-93, 1), (4, 1), (16, 1)]);
    assert_eq!(tcp_ts.positive_delta, vec![1, 0, 0]);
    assert!((tcp_ts.sample_sum - 0.00275).abs() < 1e-12);
    // The classic buckets as the text page has them (cumulative there too).
    let classic: Vec<(f64, u64)> = tcp_ts.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
    let le = |l: &str| l.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let text_classic: Vec<(f64, u64)> = text
        .lines()
        .filter(|l| l.starts_with("wireguard_peer_latency_seconds_bucket") && l.contains("method=\"tcp_ts\""))
        .map(|l| (le(l).replace("+Inf", "inf").parse().unwrap(), l.rsplit(' ').next().unwrap().parse().unwrap()))
        .collect();
    assert_eq!(classic, text_classic);

    // Gzip is the same page, compressed (but for the reading's age, which moves on).
    let gzip =
        encode(Page::new(fixture::snapshot(), &opts, fixture::conns()), Format { encoding: Encoding::Gzip, ..format })
            .unwrap();
    let mut unzipped = Vec::new();
    flate2::read::MultiGzDecoder::new(&gzip.to_vec()[..]).read_to_end(&mut unzipped).unwrap();
    let decode = |mut rest: &[u8]| -> Vec<MetricFamily> {
        std::iter::from_fn(|| (!rest.is_empty()).then(|| MetricFamily::decode_length_delimited(&mut rest).unwrap()))
            .filter(|f| f.name != "wireguard_collector_reading_age_seconds")
            .collect()
    };
    assert!(decode(&unzipped) == decode(&body), "the gzipped protobuf page differs");

    // Schema 4 doubles the resolution: -187, -177, -143.
    let four = ExportOptions { schema: "4".parse().unwrap(), ..ExportOptions::default() };
    let body = encode(Page::new(fixture::snapshot(), &four, fixture::conns()), format).unwrap().to_vec();
    let families: Vec<MetricFamily> = {
        let mut rest = &body[..];
        std::iter::from_fn(|| (!rest.is_empty()).then(|| MetricFamily::decode_length_delimited(&mut rest).unwrap()))
            .collect()
    };
    let h = families
        .iter()
        .find(|f| f.name == "wireguard_peer_latency_seconds")
        .and_then(|f| f.metric.iter().find(|m| m.label.iter().any(|l| l.value == "tcp_ts")))
        .and_then(|m| m.histogram.as_ref())
        .unwrap();
    let spans: Vec<(i32, u32)> = h.positive_span.iter().map(|s| (s.offset, s.length)).collect();
    assert_eq!((h.schema, spans), (4, vec![(-187, 1), (9, 1), (33, 1)]));
}
