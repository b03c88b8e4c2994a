//! Serving the metrics safely: the exporter-toolkit web configuration (TLS with rustls, basic
//! auth with bcrypt), bearer tokens from a file, a health endpoint, per-client rate limiting
//! of failed authentication, and reloading all of it without dropping a scrape.

pub mod auth;
pub mod config;
pub mod listen;
pub mod serve;
pub mod tokens;
