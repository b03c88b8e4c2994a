//! The collector itself: what it left out, what it is, how long its reading took, how old
//! the reading is, its errors, and the kernel's accounting of its programs.

use prometheus_client::encoding::EncodeCounterValue;

use super::family::{always, Family, Group, Samples, Type};
use super::lines::TextValue;
use super::page::{DeviceLabels, ExportOptions, Page};
use crate::refresh::Snapshot;

pub const GROUP: Group = Group {
    name: "collector",
    families: &[
        Family {
            name: "wireguard_collector_peers_omitted",
            help: "Peers left out of this page because of --metrics.max-series",
            kind: Type::Gauge,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                s.device_gauges(page, |d| {
                    page.omitted.iter().find(|(key, _)| *key == d.found.key()).map_or(0, |(_, n)| *n as i64)
                })
            },
        },
        Family {
            name: "wireguard_collector_build_info",
            help: "The collector's version and the WireGuard implementations it found (value 1)",
            kind: Type::Gauge,
            labels: &["version", "implementations"],
            per_peer: None,
            shown: always,
            samples: build_info,
        },
        Family {
            name: "wireguard_collector_scrape_duration_seconds",
            help: "Time this scrape spent reading each source",
            kind: Type::Gauge,
            labels: &["source"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for (source, t) in &page.snap.durations {
                    s.gauge(&[("source", source.label())], t.as_secs_f64())?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_reading_age_seconds",
            help: "Age of the reading of WireGuard and the maps this page shows: from its start to now (near 0 unless --scrape.max-age lets scrapes share the poll loop's readings)",
            kind: Type::Gauge,
            labels: &[],
            per_peer: None,
            shown: always,
            samples: |page, s| s.gauge(&[] as &[(&str, &str); 0], page.snap.began.elapsed().as_secs_f64()),
        },
        Family {
            name: "wireguard_collector_netlink_dump_retries",
            help: "Generic netlink dumps of a kernel device's state that the kernel flagged interrupted (NLM_F_DUMP_INTR: the device changed during the dump) and that were read again; only a consistent dump is used",
            kind: Type::Counter,
            labels: &[],
            per_peer: None,
            shown: always,
            samples: |page, s| s.counter(&[] as &[(&str, &str); 0], page.snap.dump_retries),
        },
        Family {
            name: "wireguard_collector_device_reading_age_seconds",
            help: "Age of WireGuard's own state of the device on this page: 0 when read for it; growing while WireGuard does not answer (a hung UAPI socket, an error), when the last state read stands in and the eBPF counters stay live",
            kind: Type::Gauge,
            labels: &["device"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for d in &page.snap.devices {
                    s.gauge(&DeviceLabels::of(&d.found), page.snap.wall.saturating_sub(d.read_at).as_secs_f64())?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_device_read_errors",
            help: "Readings of WireGuard's state of the device that failed, by kind: timeout (no complete answer within 2 s), truncated (the answer ended early), malformed (an answer that does not parse), errno (WireGuard or the kernel answered an error), interrupted (5 netlink dumps in a row interrupted by changes), io (the socket failed)",
            kind: Type::Counter,
            labels: &["device", "kind"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for d in &page.snap.devices {
                    for (kind, n) in &d.read_errors {
                        s.counter(&(DeviceLabels::of(&d.found), [("kind", *kind)]), *n)?;
                    }
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_errors",
            help: "Errors reading each source since the collector started",
            kind: Type::Counter,
            labels: &["source"],
            per_peer: None,
            shown: always,
            samples: |page, s| {
                for (source, n) in &page.snap.errors {
                    s.counter(&[("source", source.label())], *n)?;
                }
                Ok(())
            },
        },
        Family {
            name: "wireguard_collector_bpf_run_time_seconds",
            help: "Time the kernel spent in each of our programs (bpf stats; only while enabled with --bpf.stats)",
            kind: Type::Counter,
            labels: &["device", "program"],
            per_peer: None,
            shown: stats_enabled,
            samples: |page, s| program_stats(page, s, |st| st.run_time.as_secs_f64()),
        },
        Family {
            name: "wireguard_collector_bpf_runs",
            help: "Runs of each of our programs (bpf stats; only while enabled with --bpf.stats)",
            kind: Type::Counter,
            labels: &["device", "program"],
            per_peer: None,
            shown: stats_enabled,
            samples: |page, s| program_stats(page, s, |st| st.runs),
        },
    ],
};

fn build_info(page: &Page, s: &mut Samples) -> std::fmt::Result {
    let mut implementations: Vec<String> =
        page.snap.devices.iter().map(|d| d.found.implementation.to_string()).collect();
    implementations.sort();
    implementations.dedup();
    s.gauge(&[("version", env!("CARGO_PKG_VERSION").to_string()), ("implementations", implementations.join(","))], 1i64)
}

/// The kernel counts run time only while bpf stats are on (`--bpf.stats`).
fn stats_enabled(_: &ExportOptions, snap: &Snapshot) -> bool {
    snap.devices.iter().filter_map(|d| d.reading.as_ref()).flat_map(|r| &r.program_stats).any(|s| s.runs > 0)
}

fn program_stats<V: EncodeCounterValue + TextValue>(
    page: &Page,
    s: &mut Samples,
    value: fn(&crate::bpf::ProgramStats) -> V,
) -> std::fmt::Result {
    for d in &page.snap.devices {
        for st in d.reading.iter().flat_map(|r| &r.program_stats) {
            s.counter(&(DeviceLabels::of(&d.found), [("program", st.program)]), value(st))?;
        }
    }
    Ok(())
}
