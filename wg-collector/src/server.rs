//! The HTTP side: `/metrics` (or the configured path) in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex, OnceLock, Weak,
};

use bytes::Bytes;

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus_client::{encoding, registry::Registry};

use crate::{
    api, gzip,
    metrics::{ExportOptions, Page, PageHalf},
    monitor::{Monitor, Snapshot},
    web::serve::{authenticate, Shared},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The live page: one file, its script and style inline, embedded in the binary.
const LIVE_PAGE: &str = include_str!("live.html");

/// The routes: the metrics, the live page and its data behind authentication, and
/// `/-/healthy`, which needs none and says nothing but that the process serves.
pub fn router(telemetry_path: &str, web: Arc<Shared>, monitor: Arc<Monitor>, export: ExportOptions) -> Router {
    let source = Source { monitor: monitor.clone(), export: export.clone(), pages: Arc::default() };
    let page = LIVE_PAGE.replace("href=\"metrics\"", &format!("href=\"{}\"", telemetry_path.trim_start_matches('/')));
    let state = move || {
        let (monitor, export) = (monitor.clone(), export.clone());
        async move {
            match tokio::task::spawn_blocking(move || api::state(&monitor.latest(export.max_age), &export)).await {
                Ok(v) => Json(v).into_response(),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reading the state failed\n").into_response(),
            }
        }
    };
    let protected = Router::new()
        .route(telemetry_path, get(metrics))
        .with_state(source)
        .route("/", get(move || async move { Html(page) }))
        .route("/api/v1/state", get(state))
        .layer(axum::middleware::from_fn_with_state(web, authenticate));
    Router::new().route("/-/healthy", get(|| async { "OK\n" })).merge(protected)
}

/// The size of the last page, so the next one is encoded into a buffer that need not grow.
static LAST_PAGE: AtomicUsize = AtomicUsize::new(64 * 1024);

/// What `/metrics` serves from.
#[derive(Clone)]
struct Source {
    monitor: Arc<Monitor>,
    export: ExportOptions,
    pages: Arc<Pages>,
}

/// The format a scraper asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub openmetrics: bool,
    pub gzip: bool,
}

/// Pages being encoded, by reading and format. Scrapes that arrive together share one
/// reading (see `Monitor::refresh`) and so, here, one encoding: a crowd of scrapers costs
/// one page, in time and in memory. Only weak references are kept: a page lives as long as
/// the scrapes waiting for it.
#[derive(Default)]
struct Pages(Mutex<Vec<SharedPage>>);

type SharedPage = (Weak<Snapshot>, Format, Weak<OnceLock<Option<Bytes>>>);

impl Pages {
    fn get(&self, snap: &Arc<Snapshot>, format: Format, encode: impl FnOnce() -> Option<Bytes>) -> Option<Bytes> {
        let page = {
            let mut pages = self.0.lock().unwrap_or_else(|e| e.into_inner());
            pages.retain(|(_, _, p)| p.strong_count() > 0);
            // The Weak keeps the snapshot's allocation, so its address names it.
            let same = |(s, f, _): &&SharedPage| *f == format && std::ptr::eq(s.as_ptr(), Arc::as_ptr(snap));
            match pages.iter().find(same).and_then(|(_, _, p)| p.upgrade()) {
                Some(p) => p,
                None => {
                    let p = Arc::new(OnceLock::new());
                    pages.push((Arc::downgrade(snap), format, Arc::downgrade(&p)));
                    p
                }
            }
        };
        page.get_or_init(encode).clone()
    }
}

async fn metrics(State(source): State<Source>, headers: HeaderMap) -> Response {
    let asks = |name: header::HeaderName, what: &str| {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains(what))
    };
    let format = Format {
        openmetrics: asks(header::ACCEPT, "application/openmetrics-text"),
        gzip: asks(header::ACCEPT_ENCODING, "gzip"),
    };
    // Reading WireGuard and the maps is blocking work: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let snap = source.monitor.latest(source.export.max_age);
        source.pages.get(&snap, format, || encode(Page::new(snap.clone(), &source.export), format).ok())
    })
    .await;
    let Format { openmetrics, gzip } = format;
    match encoded {
        Ok(Some(body)) => {
            let ct = if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT };
            let mut r = ([(header::CONTENT_TYPE, ct)], Body::from(body)).into_response();
            if gzip {
                r.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
            }
            r.headers_mut().insert(header::VARY, header::HeaderValue::from_static("accept-encoding"));
            r
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response(),
    }
}

/// The page in the format asked for: its two halves encoded (and compressed, if asked) on
/// two threads.
pub(crate) fn encode(page: Page, format: Format) -> Result<Bytes, std::fmt::Error> {
    let page = Arc::new(page);
    let [first, second] = page.halves();
    let last = LAST_PAGE.load(Ordering::Relaxed);
    let half = |half: PageHalf, capacity: usize, end: bool| {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(half));
        let mut text = String::with_capacity(capacity);
        if format.openmetrics {
            encoding::text::encode_registry(&mut text, &registry)?;
            if end {
                encoding::text::encode_eof(&mut text)?;
            }
        } else {
            encoding::prometheus_text::encode(&mut text, &registry)?;
        }
        let piece =
            if format.gzip { Some(gzip::deflate(text.as_bytes(), end).map_err(|_| std::fmt::Error)?) } else { None };
        Ok::<_, std::fmt::Error>((text, piece))
    };
    let (first, second) = std::thread::scope(|scope| {
        let second = scope.spawn(|| half(second, last * 5 / 8, true));
        (half(first, last * 9 / 8, false), second.join())
    });
    let ((mut body, first_piece), (rest, second_piece)) = (first?, second.map_err(|_| std::fmt::Error)??);
    LAST_PAGE.store(body.len() + rest.len(), Ordering::Relaxed);
    Ok(match (first_piece, second_piece) {
        (Some(a), Some(b)) => Bytes::from(gzip::member(vec![a, b])),
        _ => {
            body.push_str(&rest);
            Bytes::from(body)
        }
    })
}

#[cfg(test)]
mod tests {
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
        golden("page.prom", &page(&ExportOptions::default_for_tests(), text));
        // Gzip is the same page, compressed.
        assert_eq!(
            page(&ExportOptions::default_for_tests(), Format { openmetrics: false, gzip: true }),
            page(&ExportOptions::default_for_tests(), text)
        );
    }

    #[test]
    fn the_redacted_trimmed_openmetrics_page_is_the_golden_one() {
        let opts = ExportOptions {
            redact_endpoints: true,
            redact_allowed_ips: true,
            max_series: 90,
            ..ExportOptions::default_for_tests()
        };
        golden("page-redacted-trimmed.om", &page(&opts, Format { openmetrics: true, gzip: false }));
    }
}
