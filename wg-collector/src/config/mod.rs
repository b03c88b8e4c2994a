//! One `Config`, made from the command line by one `TryFrom`: every flag is checked here,
//! once, and every default lives in [`Args`] (which takes them from the constants of the
//! parts that own them). A refusal names the flag and says what it must be.

mod args;

use std::{path::PathBuf, time::Duration};

pub use args::{version, Args};
use thiserror::Error;

use crate::{
    bpf::ProbeOptions,
    http::{
        conn::{Caps, TimeoutSettings},
        listen::ListenAddress,
        serve::SettingsFiles,
    },
    metrics::ExportOptions,
    names::NameSources,
    netns::Selection,
    redact::Redact,
    refresh::{self, Underlays},
};

/// Everything the collector runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub web: WebOptions,
    /// What the refresh reads and how (pins are resolved at start, see [`PinRequest`]).
    pub refresh: refresh::Options,
    pub poll_interval: Duration,
    /// A scrape may show a reading that began this long ago (0: always a new one).
    pub scrape_max_age: Duration,
    pub export: ExportOptions,
    pub names: NameSources,
    pub bpf_stats: bool,
    pub pin: PinRequest,
    /// `--bpf.unpin`: unpin and exit.
    pub unpin: bool,
}

/// Where and how metrics are served.
#[derive(Clone, Debug)]
pub struct WebOptions {
    /// None: the default, which depends on whether authentication is configured.
    pub listen: Option<ListenAddress>,
    pub files: SettingsFiles,
    pub insecure: bool,
    pub telemetry_path: String,
    /// Connections at once, as the flags ask (main lowers the total to fit the open-files
    /// limit).
    pub caps: Caps,
}

/// What the flags say of pinning; bpffs is mounted (or found missing) at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinRequest {
    /// `--bpf.pin-path`; None: the default path, where a missing bpffs only warns.
    pub path: Option<PathBuf>,
    /// `--bpf.no-pin`.
    pub off: bool,
    /// `--bpf.replace-pinned`.
    pub replace: bool,
}

/// A flag whose value cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{flag} {value}: {why}")]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub why: &'static str,
}

fn refuse(flag: &'static str, value: impl std::fmt::Display, why: &'static str) -> FlagError {
    FlagError { flag, value: value.to_string(), why }
}

/// Seconds within `range`, as a Duration.
fn seconds(
    flag: &'static str,
    v: f64,
    range: std::ops::RangeInclusive<f64>,
    why: &'static str,
) -> Result<Duration, FlagError> {
    if !range.contains(&v) {
        return Err(refuse(flag, v, why));
    }
    Ok(Duration::from_secs_f64(v))
}

impl TryFrom<Args> for Config {
    type Error = FlagError;

    fn try_from(a: Args) -> Result<Self, FlagError> {
        let path = &a.telemetry_path;
        if !path.starts_with('/') || path == "/" || path == "/-/healthy" {
            return Err(FlagError {
                flag: "--web.telemetry-path",
                value: format!("{path:?}"),
                why: "must start with / and not be / or /-/healthy",
            });
        }
        let poll_interval =
            seconds("--poll-interval", a.poll_interval, 0.05..=3600.0, "must be between 0.05 and 3600 seconds")?;
        let scrape_max_age =
            seconds("--scrape.max-age", a.scrape_max_age, 0.0..=3600.0, "must be between 0 and 3600 seconds")?;
        let pending_ttl =
            seconds("--latency.pending-ttl", a.pending_ttl, 0.1..=3600.0, "must be between 0.1 and 3600 seconds")?;
        if !a.latency_sample.is_power_of_two() {
            return Err(refuse("--latency.sample", a.latency_sample, "must be a power of two (1, 2, 4, ...)"));
        }
        if !a.max_pending.is_power_of_two() {
            return Err(refuse("--latency.max-pending", a.max_pending, "must be a power of two (65536, 131072, ...)"));
        }
        if a.max_connections == 0 {
            return Err(refuse("--web.max-connections", a.max_connections, "must be at least 1"));
        }
        if a.max_connections_per_client == 0 || a.max_connections_per_client > a.max_connections {
            return Err(refuse(
                "--web.max-connections-per-client",
                a.max_connections_per_client,
                "must be between 1 and --web.max-connections",
            ));
        }
        let underlays = match a.underlays.iter().any(|u| u == "none") {
            false if a.underlays.is_empty() => Underlays::Routed,
            false => Underlays::Named(a.underlays.clone()),
            true if a.underlays.len() == 1 => Underlays::Off,
            true => return Err(refuse("--underlay", a.underlays.join(","), "none cannot go with interfaces")),
        };
        let off = underlays == Underlays::Off;
        let redact = |what: &str| a.redact.iter().any(|r| r == what || r == "all");
        let netns = Selection::parse(&a.netns)
            .map_err(|value| refuse("--netns", value, "neither all, a name under /run/netns, nor an absolute path"))?;
        Ok(Config {
            web: WebOptions {
                listen: a.listen_address,
                files: SettingsFiles {
                    web_config: a.web_config,
                    token_file: a.bearer_token_file,
                    timeout_flags: TimeoutSettings {
                        read_header: a.read_header_timeout,
                        idle: a.idle_timeout,
                        write: a.write_timeout,
                    },
                    allowed_flag: a.allowed_clients,
                },
                insecure: a.insecure,
                telemetry_path: a.telemetry_path,
                caps: Caps { total: a.max_connections, per_client: a.max_connections_per_client },
            },
            refresh: refresh::Options {
                uapi_dir: a.uapi_dir,
                devices: a.devices,
                probe: ProbeOptions {
                    max_peers: a.max_peers,
                    max_allowed_ips: a.max_allowed_ips,
                    max_pending: a.max_pending,
                    max_hist_entries: a.max_hist_entries,
                    latency_sample: a.latency_sample,
                    // Encap/decap delay pairs the two sides: without the underlay's
                    // programs the FIFOs would only fill.
                    delay: !a.no_delay && !off,
                    log_level: log::max_level(),
                },
                pending_ttl,
                underlays,
                pins: None,
                netns,
                redact: Redact { endpoints: redact("endpoints"), allowed_ips: redact("allowed-ips") },
            },
            poll_interval,
            scrape_max_age,
            export: ExportOptions {
                buckets: a.latency_buckets,
                schema: a.latency_schema,
                redact_endpoints: redact("endpoints"),
                redact_allowed_ips: redact("allowed-ips"),
                max_series: a.max_series,
                peer_name_label: a.peer_name_label,
                up_after: a.up_after,
                underlay: !off,
                compat: crate::metrics::Compat {
                    on: a.compat.is_some(),
                    separate_allowed_ips: a.compat_separate_allowed_ips,
                    remote_ip_port: a.compat_remote_ip_port,
                    handshake_delay: a.compat_handshake_delay,
                },
            },
            names: NameSources { names_files: a.names_files, wg_configs: a.wg_configs },
            bpf_stats: a.bpf_stats,
            pin: PinRequest { path: a.pin_path, off: a.no_pin, replace: a.replace_pinned },
            unpin: a.unpin,
        })
    }
}

#[cfg(test)]
mod tests;
