//! The HTTP side: `/metrics` (or the configured path) in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use axum::{
    body::Body,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    Json,
    routing::get,
    Router,
};
use prometheus_client::{encoding, registry::Registry};

use crate::{
    api,
    metrics::{ExportOptions, Page, PageHalf},
    monitor::Monitor,
    web::serve::{authenticate, Shared},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The live page: one file, its script and style inline, embedded in the binary.
const LIVE_PAGE: &str = include_str!("live.html");

/// The routes: the metrics, the live page and its data behind authentication, and
/// `/-/healthy`, which needs none and says nothing but that the process serves.
pub fn router(telemetry_path: &str, web: Arc<Shared>, monitor: Arc<Monitor>, export: ExportOptions) -> Router {
    let source = (monitor.clone(), export.clone());
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

async fn metrics(State((monitor, export)): State<(Arc<Monitor>, ExportOptions)>, headers: HeaderMap) -> Response {
    let asks = |name: header::HeaderName, what: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains(what));
    let openmetrics = asks(header::ACCEPT, "application/openmetrics-text");
    let gzip = asks(header::ACCEPT_ENCODING, "gzip");
    // Reading WireGuard and the maps is blocking work: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let page = Arc::new(Page::new(monitor.latest(export.max_age), &export));
        let [first, second] = page.halves();
        let last = LAST_PAGE.load(Ordering::Relaxed);
        let encode = |half: PageHalf, capacity: usize| {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(half));
            let mut out = String::with_capacity(capacity);
            if openmetrics {
                encoding::text::encode_registry(&mut out, &registry)?;
            } else {
                encoding::prometheus_text::encode(&mut out, &registry)?;
            }
            Ok::<_, std::fmt::Error>(out)
        };
        // The halves on two threads; the first's buffer is sized for the whole page.
        let (body, rest) = std::thread::scope(|scope| {
            let rest = scope.spawn(|| encode(second, last * 5 / 8));
            (encode(first, last * 9 / 8), rest.join())
        });
        let mut body = body?;
        body.push_str(&rest.map_err(|_| std::fmt::Error)??);
        if openmetrics {
            encoding::text::encode_eof(&mut body)?;
        }
        LAST_PAGE.store(body.len(), Ordering::Relaxed);
        if !gzip {
            return Ok::<_, std::fmt::Error>(Body::from(body));
        }
        // The fastest level: most of gzip's gain on a page of repeated label sets, at a
        // fraction of the default level's time.
        let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::fast());
        z.write_all(body.as_bytes()).map_err(|_| std::fmt::Error)?;
        Ok(Body::from(z.finish().map_err(|_| std::fmt::Error)?))
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let ct = if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT };
            let mut r = ([(header::CONTENT_TYPE, ct)], body).into_response();
            if gzip {
                r.headers_mut().insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
            }
            r.headers_mut().insert(header::VARY, header::HeaderValue::from_static("accept-encoding"));
            r
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response(),
    }
}
