//! Shared by the integration tests and by `cargo xtask lab` / `demo`: a lab of real
//! WireGuard peers in network namespaces ([`lab`]), the collector run inside one of them
//! ([`collector`]), and a reader for what it serves ([`scrape`]).
//!
//! Everything a lab creates carries its owner's pid in its name and is removed when the lab
//! is dropped, also when a test panics; labs left by a killed process are swept by the next.

pub mod capture;
pub mod collector;
pub mod exporter;
pub mod impair;
pub mod lab;
pub mod netns;
pub mod packets;
pub mod prometheus;
pub mod relay;
pub mod scrape;
pub mod tcp_ping;
pub mod vm;

pub use collector::Collector;
pub use lab::{EmptyNamespace, Implementation, Lab, Side, SoloDevice};
pub use scrape::Metrics;
