//! wg-collector: per-peer WireGuard telemetry from eBPF programs on the WireGuard interface,
//! merged with WireGuard's own state and served to Prometheus.

pub mod api;
pub mod bpf;
#[cfg(test)]
mod fixture;
pub mod gzip;
pub mod histogram;
pub mod history;
pub mod interfaces;
pub mod links;
pub mod metrics;
pub mod monitor;
pub mod names;
pub mod pool;
pub mod privileges;
pub mod server;
pub mod web;
pub mod wireguard;
