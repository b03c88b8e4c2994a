//! The Prometheus side: the catalogue of metric families, grouped by concern (one file per
//! group, as node_exporter has one per collector), and the page of one reading encoded from
//! it. A family is defined once, as data (see family.rs): the series budget of
//! `--metrics.max-series`, the README's table and the tests all read the same catalogue.
//! Names and HELP texts keep the contract of ../shared/docs/metrics.md.

mod budget;
mod buffers;
mod collector;
mod compat;
mod device;
mod encode;
mod family;
mod format;
mod http;
mod latency;
mod lines;
mod messages;
mod page;
mod path;
mod peer;
mod traffic;

pub use compat::Compat;
pub use encode::{encode, Encoded};
pub use family::{Family, Group, Type};
pub use format::{Encoding, Exposition, Format};
pub use page::{ExportOptions, Page, DEFAULT_MAX_SERIES};

/// Every family of the page, in the page's order.
pub const GROUPS: [Group; 9] = [
    device::GROUP,
    peer::GROUP,
    traffic::GROUP,
    latency::GROUP,
    messages::GROUP,
    path::GROUP,
    collector::GROUP,
    http::GROUP,
    compat::GROUP,
];

/// Every family, in the page's order.
pub fn families() -> impl Iterator<Item = &'static Family> {
    GROUPS.iter().flat_map(|g| g.families)
}

#[cfg(test)]
mod tests;
