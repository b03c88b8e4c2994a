//! The page of a reading built in memory, against the golden files: the catalogue and the
//! encoding together, byte for byte.
use std::io::Read;

use super::*;
use crate::fixture;

/// The page of the fixture's reading; the reading's age (a clock) is the one value
/// written as AGE.
fn page(opts: &ExportOptions, format: Format) -> String {
    let body = encode(Page::new(fixture::snapshot(), opts), format).unwrap();
    let text = if format.gzip {
        let mut s = String::new();
        flate2::read::MultiGzDecoder::new(&body[..]).read_to_string(&mut s).unwrap();
        s
    } else {
        String::from_utf8(body.to_vec()).unwrap()
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
    let text = Format { openmetrics: false, gzip: false };
    golden("page.prom", &page(&ExportOptions::default(), text));
    // Gzip is the same page, compressed.
    assert_eq!(
        page(&ExportOptions::default(), Format { openmetrics: false, gzip: true }),
        page(&ExportOptions::default(), text)
    );
}

#[test]
fn the_redacted_trimmed_openmetrics_page_is_the_golden_one() {
    let opts =
        ExportOptions { redact_endpoints: true, redact_allowed_ips: true, max_series: 90, ..ExportOptions::default() };
    golden("page-redacted-trimmed.om", &page(&opts, Format { openmetrics: true, gzip: false }));
}
