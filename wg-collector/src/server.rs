//! The HTTP side: `/metrics` (or the configured path) in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it.

use std::sync::Arc;

use axum::{
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
    metrics::ExportOptions,
    monitor::Monitor,
    web::serve::{authenticate, Shared},
};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The live page: one file, its script and style inline, embedded in the binary.
const LIVE_PAGE: &str = include_str!("live.html");

/// The routes: the metrics, the live page and its data behind authentication, and
/// `/-/healthy`, which needs none and says nothing but that the process serves.
pub fn router(registry: Registry, telemetry_path: &str, web: Arc<Shared>, monitor: Arc<Monitor>, export: ExportOptions) -> Router {
    let registry = Arc::new(registry);
    let page = LIVE_PAGE.replace("href=\"metrics\"", &format!("href=\"{}\"", telemetry_path.trim_start_matches('/')));
    let state = move || {
        let (monitor, export) = (monitor.clone(), export.clone());
        async move {
            match tokio::task::spawn_blocking(move || api::state(&monitor.refresh(), &export)).await {
                Ok(v) => Json(v).into_response(),
                Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "reading the state failed\n").into_response(),
            }
        }
    };
    let protected = Router::new()
        .route(telemetry_path, get(metrics))
        .with_state(registry)
        .route("/", get(move || async move { Html(page) }))
        .route("/api/v1/state", get(state))
        .layer(axum::middleware::from_fn_with_state(web, authenticate));
    Router::new().route("/-/healthy", get(|| async { "OK\n" })).merge(protected)
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    // Reading WireGuard and the maps is blocking work: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::with_capacity(64 * 1024);
        let r = if openmetrics {
            encoding::text::encode(&mut body, &registry)
        } else {
            encoding::prometheus_text::encode(&mut body, &registry)
        };
        r.map(|_| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let ct = if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response(),
    }
}
