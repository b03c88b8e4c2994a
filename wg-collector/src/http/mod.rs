//! The HTTP side: the routes (the metrics, the live page and its state API, the health
//! check), and serving them safely: the exporter-toolkit web configuration (TLS with rustls,
//! basic auth with bcrypt), bearer tokens from a file, per-client rate limiting of failed
//! authentication, and reloading all of it without dropping a scrape.

pub mod allow;
pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod listen;
pub mod requests;
pub mod router;
pub mod serve;
pub mod tokens;
