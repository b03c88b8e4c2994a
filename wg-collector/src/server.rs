//! The HTTP side: `/metrics` (or the configured path) in the Prometheus text format, or
//! OpenMetrics when the scraper asks for it.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::{encoding, registry::Registry};

use crate::web::serve::{authenticate, Shared};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes: the metrics and a landing page behind authentication, and `/-/healthy`,
/// which needs none and says nothing but that the process serves.
pub fn router(registry: Registry, telemetry_path: &str, web: Arc<Shared>) -> Router {
    let registry = Arc::new(registry);
    let landing = format!(
        "<!doctype html><html><head><title>WireGuard collector</title></head><body>\
         <h1>WireGuard collector</h1><p><a href=\"{telemetry_path}\">Metrics</a></p></body></html>"
    );
    let protected = Router::new()
        .route(telemetry_path, get(metrics))
        .route("/", get(move || async move { Html(landing) }))
        .with_state(registry)
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
