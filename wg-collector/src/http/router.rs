//! The HTTP side: `/metrics` (or the configured path) in the Prometheus text format, or
//! OpenMetrics, or Prometheus protobuf with native histograms, as the scraper's `Accept`
//! prefers.

use std::{
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
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

use super::{
    api,
    conn::Gate,
    requests::{observe, EndpointCounts, Requests},
    serve::{allow, authenticate, Shared},
};
use crate::{
    metrics::{encode, Encoded, Encoding, ExportOptions, Exposition, Format, Page},
    refresh::{Monitor, Snapshot},
};

/// The live page: one file, its script and style inline, embedded in the binary.
const LIVE_PAGE: &str = include_str!("live.html");

/// The routes: the metrics, the live page and its data behind authentication, and
/// `/-/healthy`, which needs none and says nothing but that the process serves.
///
/// A scrape shows a reading that began at most `max_age` ago (`--scrape.max-age`; zero: a
/// new one).
pub fn router(
    telemetry_path: &str,
    web: Arc<Shared>,
    monitor: Arc<Monitor>,
    export: ExportOptions,
    max_age: Duration,
) -> Router {
    let source = MetricsState {
        monitor: monitor.clone(),
        export: export.clone(),
        max_age,
        gate: web.gate.clone(),
        requests: web.requests.clone(),
        pages: Arc::default(),
    };
    let observed = (web.requests.clone(), Arc::<str>::from(telemetry_path));
    let page = LIVE_PAGE.replace("href=\"metrics\"", &format!("href=\"{}\"", telemetry_path.trim_start_matches('/')));
    let state = move || {
        let (monitor, export) = (monitor.clone(), export.clone());
        async move {
            match tokio::task::spawn_blocking(move || api::state(&monitor.latest(max_age), &export)).await {
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
        .layer(axum::middleware::from_fn_with_state(web.clone(), authenticate));
    // Outermost first: every request timed and counted, then only allowed clients let in.
    Router::new()
        .route("/-/healthy", get(|| async { "OK\n" }))
        .merge(protected)
        .layer(axum::middleware::from_fn_with_state(web, allow))
        .layer(axum::middleware::from_fn_with_state(observed, observe))
}

/// What `/metrics` serves from.
#[derive(Clone)]
struct MetricsState {
    monitor: Arc<Monitor>,
    export: ExportOptions,
    max_age: Duration,
    gate: Arc<Gate>,
    requests: Arc<Requests>,
    pages: Arc<Pages>,
}

/// Pages being encoded, by reading and format. Scrapes that arrive together share one
/// reading (see `Monitor::refresh`) and so, here, one encoding: a crowd of scrapers costs
/// one page, in time and in memory. Only weak references are kept: a page lives as long as
/// the scrapes waiting for it.
#[derive(Default)]
struct Pages(Mutex<Vec<SharedPage>>);

type SharedPage = (Weak<Snapshot>, Format, Weak<OnceLock<Option<Encoded>>>);

impl Pages {
    fn get(&self, snap: &Arc<Snapshot>, format: Format, encode: impl FnOnce() -> Option<Encoded>) -> Option<Encoded> {
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

async fn metrics(State(source): State<MetricsState>, headers: HeaderMap) -> Response {
    let all = |name: header::HeaderName| -> String {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",")
    };
    let format = Format {
        exposition: Exposition::negotiate(&all(header::ACCEPT)),
        encoding: Encoding::negotiate(&all(header::ACCEPT_ENCODING)),
    };
    // Reading WireGuard and the maps is blocking work: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let snap = source.monitor.latest(source.max_age);
        source.pages.get(&snap, format, || {
            let endpoint = EndpointCounts { conns: source.gate.counts(), requests: source.requests.counts() };
            encode(Page::new(snap.clone(), &source.export, endpoint), format).ok()
        })
    })
    .await;
    let Format { exposition, encoding } = format;
    match encoded {
        Ok(Some(body)) => {
            let mut r =
                ([(header::CONTENT_TYPE, exposition.content_type())], Body::new(Chunks(body.0.into()))).into_response();
            if let Some(coding) = encoding.header() {
                r.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static(coding));
            }
            r.headers_mut().insert(header::VARY, header::HeaderValue::from_static("accept, accept-encoding"));
            r
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response(),
    }
}

/// A page's pieces as a response body, sent in order without joining them.
struct Chunks(std::collections::VecDeque<Bytes>);

impl axum::body::HttpBody for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0.iter().map(|b| b.len() as u64).sum())
    }
}
