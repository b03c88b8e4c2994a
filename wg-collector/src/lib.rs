//! wg-collector: per-peer WireGuard telemetry from eBPF programs on the WireGuard interface,
//! merged with WireGuard's own state and served to Prometheus.

pub mod bpf;
pub mod config;
#[cfg(test)]
mod fixture;
pub mod gzip;
pub mod histogram;
pub mod history;
pub mod http;
pub mod interfaces;
pub mod links;
pub mod memlock;
pub mod metrics;
pub mod names;
pub mod netns;
pub mod notify;
pub mod open_files;
pub mod pool;
pub mod privileges;
pub mod redact;
pub mod refresh;
pub mod wireguard;
