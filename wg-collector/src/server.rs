//! The HTTP side: `/metrics` (or the configured path) in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it.

use std::{
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
    api, gzip,
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
        // Each half encoded (and compressed, if asked) on a thread of its own.
        let half = |half: PageHalf, capacity: usize, end: bool| {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(half));
            let mut text = String::with_capacity(capacity);
            if openmetrics {
                encoding::text::encode_registry(&mut text, &registry)?;
                if end {
                    encoding::text::encode_eof(&mut text)?;
                }
            } else {
                encoding::prometheus_text::encode(&mut text, &registry)?;
            }
            let piece = if gzip { Some(gzip::deflate(text.as_bytes(), end).map_err(|_| std::fmt::Error)?) } else { None };
            Ok::<_, std::fmt::Error>((text, piece))
        };
        let (first, second) = std::thread::scope(|scope| {
            let second = scope.spawn(|| half(second, last * 5 / 8, true));
            (half(first, last * 9 / 8, false), second.join())
        });
        let ((mut body, first_piece), (rest, second_piece)) = (first?, second.map_err(|_| std::fmt::Error)??);
        LAST_PAGE.store(body.len() + rest.len(), Ordering::Relaxed);
        match (first_piece, second_piece) {
            (Some(a), Some(b)) => Ok::<_, std::fmt::Error>(Body::from(gzip::member(vec![a, b]))),
            _ => {
                body.push_str(&rest);
                Ok(Body::from(body))
            }
        }
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
