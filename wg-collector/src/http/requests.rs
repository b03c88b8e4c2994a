//! What the endpoint answered: requests by handler and status code, how long each handler
//! took, and the requests refused before a handler ran, by reason. Recorded by the outermost
//! layer of the router ([`observe`]) and by the checks that refuse ([`Requests::refuse`]);
//! the page shows them as wireguard_collector_http_*.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use wg_common::buckets::bucket_of;

use super::conn::ConnCounts;
use crate::histogram::Series;

/// The routes, as the `handler` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handler {
    Metrics,
    State,
    Live,
    Healthy,
    /// Any other path (answered 404).
    Other,
}

impl Handler {
    pub fn label(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::State => "state",
            Self::Live => "live",
            Self::Healthy => "healthy",
            Self::Other => "other",
        }
    }

    fn of(path: &str, telemetry_path: &str) -> Self {
        match path {
            p if p == telemetry_path => Self::Metrics,
            "/api/v1/state" => Self::State,
            "/" => Self::Live,
            "/-/healthy" => Self::Healthy,
            _ => Self::Other,
        }
    }
}

/// Why a request was refused before its handler ran, as the `reason` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No or wrong credentials (401).
    Unauthenticated,
    /// A client outside --web.allowed-clients (403).
    ForbiddenClient,
    /// A client that failed authentication too often (429).
    RateLimited,
    /// Credentials in the URL (400).
    TokenInUrl,
    /// A TLS handshake that failed (no request at all).
    TlsHandshake,
}

impl Refused {
    pub const ALL: [Refused; 5] =
        [Self::Unauthenticated, Self::ForbiddenClient, Self::RateLimited, Self::TokenInUrl, Self::TlsHandshake];

    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::ForbiddenClient => "forbidden_client",
            Self::RateLimited => "rate_limited",
            Self::TokenInUrl => "token_in_url",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// The counts, kept while the collector runs.
#[derive(Default)]
pub struct Requests {
    answered: Mutex<BTreeMap<(Handler, u16), u64>>,
    durations: Mutex<BTreeMap<Handler, Series>>,
    refused: [AtomicU64; Refused::ALL.len()],
}

/// The counts as of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestCounts {
    /// (handler, status code) → requests.
    pub answered: BTreeMap<(Handler, u16), u64>,
    pub durations: BTreeMap<Handler, Series>,
    /// By [`Refused`].
    pub refused: [u64; Refused::ALL.len()],
}

/// What the page shows of its own endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointCounts {
    pub conns: ConnCounts,
    pub requests: RequestCounts,
}

impl Requests {
    fn answered(&self, handler: Handler, code: u16, took_ns: u64) {
        *self.answered.lock().unwrap_or_else(|e| e.into_inner()).entry((handler, code)).or_default() += 1;
        self.durations.lock().unwrap_or_else(|e| e.into_inner()).entry(handler).or_default().add(
            bucket_of(took_ns),
            1,
            took_ns,
        );
    }

    pub fn refuse(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            answered: self.answered.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            durations: self.durations.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            refused: std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed)),
        }
    }
}

/// The outermost layer: times every request and counts its answer by handler and code.
pub async fn observe(State((requests, path)): State<(Arc<Requests>, Arc<str>)>, req: Request, next: Next) -> Response {
    let handler = Handler::of(req.uri().path(), &path);
    let t0 = Instant::now();
    let answer = next.run(req).await;
    requests.answered(handler, answer.status().as_u16(), t0.elapsed().as_nanos() as u64);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_handlers_and_counts() {
        assert_eq!(Handler::of("/metrics", "/metrics"), Handler::Metrics);
        assert_eq!(Handler::of("/x", "/x"), Handler::Metrics);
        assert_eq!(Handler::of("/metrics", "/x"), Handler::Other);
        assert_eq!(Handler::of("/-/healthy", "/metrics"), Handler::Healthy);
        let r = Requests::default();
        r.answered(Handler::Metrics, 200, 2_000_000);
        r.answered(Handler::Metrics, 200, 4_000_000);
        r.answered(Handler::Metrics, 401, 10_000);
        r.refuse(Refused::Unauthenticated);
        let c = r.counts();
        assert_eq!(c.answered[&(Handler::Metrics, 200)], 2);
        assert_eq!(c.answered[&(Handler::Metrics, 401)], 1);
        assert_eq!((c.durations[&Handler::Metrics].count, c.durations[&Handler::Metrics].sum_ns), (3, 6_010_000));
        assert_eq!(c.refused, [1, 0, 0, 0, 0]);
    }
}
