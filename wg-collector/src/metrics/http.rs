//! The metrics endpoint's own connections: how many are open, and how many the server
//! refused (over a cap) or ended (a deadline missed), so a flood shows on the page it tried
//! to silence.

use super::family::{always, Family, Group, Samples, Type};
use super::page::Page;
use crate::http::{
    conn::{Ended, Refusal},
    requests::Refused,
};

pub const GROUP: Group = Group {
    name: "http",
    families: &[
        Family {
            name: "wireguard_collector_http_connections",
            help: "Connections to the metrics endpoint open now",
            kind: Type::Gauge,
            labels: &[],
            per_peer: None,
            shown: always,
            samples: |page, s| s.gauge(&[] as &[(&str, &str); 0], page.endpoint.conns.open as i64),
        },
        Family {
            name: "wireguard_collector_http_connections_refused",
            help: "Connections closed as they arrived: over --web.max-connections (max_connections) or over --web.max-connections-per-client from one address (max_connections_per_client)",
            kind: Type::Counter,
            labels: &["reason"],
            per_peer: None,
            shown: always,
            samples: refused,
        },
        Family {
            name: "wireguard_collector_http_connections_closed",
            help: "Connections the server ended: headers not complete within --web.read-header-timeout (header_timeout), idle past --web.idle-timeout (idle_timeout), an answer not read for --web.write-timeout (write_timeout), a TLS handshake not done within the header timeout (tls_handshake_timeout)",
            kind: Type::Counter,
            labels: &["reason"],
            per_peer: None,
            shown: always,
            samples: ended,
        },
        Family {
            name: "wireguard_collector_http_requests",
            help: "Requests answered, by handler (metrics, state, live, healthy, other) and HTTP status code",
            kind: Type::Counter,
            labels: &["handler", "code"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for ((handler, code), n) in &page.endpoint.requests.answered {
                    s.counter(&[("handler", handler.label()), ("code", code.to_string().as_str())], *n)?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_http_request_duration_seconds",
            help: "Time from a request's arrival to its answer's headers, by handler (a scrape's includes reading WireGuard and the maps)",
            kind: Type::Histogram,
            labels: &["handler"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for (handler, series) in &page.endpoint.requests.durations {
                    s.histogram(&[("handler", handler.label())], series, page)?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_http_refusals",
            help: "Requests refused before their handler ran, by reason: unauthenticated (401), forbidden_client (403, not among --web.allowed-clients), rate_limited (429, too many failed authentications), token_in_url (400), tls_handshake (a TLS handshake that failed)",
            kind: Type::Counter,
            labels: &["reason"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for r in Refused::ALL {
                    s.counter(&[("reason", r.label())], page.endpoint.requests.refused[r as usize])?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_http_accept_errors",
            help: "Connections that could not be accepted (the kernel's error, e.g. out of file descriptors)",
            kind: Type::Counter,
            labels: &[],
            per_peer: None,
            shown: always,
            samples: |page, s| s.counter(&[] as &[(&str, &str); 0], page.endpoint.conns.accept_errors),
        },
    ],
};

fn refused(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for r in Refusal::ALL {
        s.counter(&[("reason", r.label())], page.endpoint.conns.refused[r as usize])?;
    }
    Ok(())
}

fn ended(page: &Page, s: &mut Samples) -> std::fmt::Result {
    for e in Ended::ALL {
        s.counter(&[("reason", e.label())], page.endpoint.conns.ended[e as usize])?;
    }
    Ok(())
}
