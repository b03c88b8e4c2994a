//! Follows the WireGuard devices of this namespace: finds them, reads their state, attaches
//! the programs to each new device and keeps the maps in sync with its peers.
//!
//! `refresh` is called by the poll loop (so maps follow peers between scrapes) and by every
//! scrape (so a scrape always shows the state of that moment).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use wg_common::{
    latency::{HistKey, HistValue},
    Counter, PeerCounters, Unattributed, DIRECTIONS,
};

use crate::{
    bpf::{DeviceProbe, LatencyStats, ProbeOptions, ProgramStats},
    underlay,
    wireguard::{
        discovery::{self, Found, Source},
        netlink, uapi, Device, Key,
    },
};

/// Where an error or a duration comes from, as the `source` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorSource {
    Netlink,
    Uapi,
    Bpf,
}

impl ErrorSource {
    pub const ALL: [ErrorSource; 3] = [Self::Netlink, Self::Uapi, Self::Bpf];
    pub fn label(self) -> &'static str {
        match self {
            Self::Netlink => "netlink",
            Self::Uapi => "uapi",
            Self::Bpf => "bpf",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub uapi_dir: PathBuf,
    /// Only these devices (all when empty).
    pub devices: Vec<String>,
    pub probe: ProbeOptions,
    /// How long a packet may wait for its answer before the collector forgets it.
    pub pending_ttl: Duration,
    /// Underlay interfaces to watch; empty = those the peers' endpoints are routed through.
    pub underlays: Vec<String>,
}

/// What one refresh saw of one device.
pub struct DeviceSnapshot {
    pub found: Found,
    pub state: Device,
    /// eBPF counters per peer; empty when the programs are not attached.
    pub counters: HashMap<Key, PeerCounters>,
    pub unattributed: Option<[[Counter; Unattributed::ALL.len()]; DIRECTIONS]>,
    pub program_stats: Vec<ProgramStats>,
    /// Latency histogram entries with samples: (peer if known, key, value).
    pub latency: Vec<(Option<Key>, HistKey, HistValue)>,
    pub latency_stats: Option<LatencyStats>,
    /// Packets waiting for their answer now.
    pub pending: u64,
}

/// What one refresh saw.
pub struct Snapshot {
    pub devices: Vec<DeviceSnapshot>,
    /// Time spent per source in this refresh.
    pub durations: Vec<(ErrorSource, Duration)>,
    /// Errors per source since start.
    pub errors: Vec<(ErrorSource, u64)>,
}

struct Tracked {
    found: Found,
    probe: Option<DeviceProbe>,
    /// Endpoints whose underlay interface was looked up (the route lookup is done once).
    routed: HashSet<SocketAddr>,
    /// The last attach error, so it is logged once, not at every refresh.
    attach_error: Option<String>,
}

pub struct Monitor {
    opts: Options,
    tracked: Mutex<BTreeMap<String, Tracked>>,
    errors: [AtomicU64; 3],
}

impl Monitor {
    /// Attaches the underlay programs where the device's datagrams go: the `--underlay`
    /// interfaces, or the interface each peer endpoint is routed through (looked up once per
    /// endpoint).
    fn follow_underlays(&self, p: &mut DeviceProbe, routed: &mut HashSet<SocketAddr>, state: &Device) {
        let mut wanted: Vec<String> = self.opts.underlays.clone();
        if wanted.is_empty() {
            for e in state.peers.iter().filter_map(|p| p.endpoint) {
                if routed.insert(e) {
                    wanted.extend(underlay::interface_for(e));
                }
            }
        }
        for iface in wanted {
            if p.underlays().contains(&iface) {
                continue;
            }
            match p.attach_underlay(&iface) {
                Ok(()) => tracing::info!(device = %state.name, underlay = %iface, "underlay programs attached"),
                Err(e) => self.error(ErrorSource::Bpf, format_args!("device {}: {e:#}", state.name)),
            }
        }
    }

    pub fn new(opts: Options) -> Self {
        Self { opts, tracked: Mutex::new(BTreeMap::new()), errors: Default::default() }
    }

    fn error(&self, source: ErrorSource, what: impl std::fmt::Display) {
        self.errors[source as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = source.label(), "{what}");
    }

    /// Reads every device, brings the maps in line with it and returns what it saw.
    pub fn refresh(&self) -> Snapshot {
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        let mut spent: HashMap<ErrorSource, Duration> = HashMap::new();
        let found: Vec<Found> = discovery::discover(&self.opts.uapi_dir)
            .into_iter()
            .filter(|f| self.opts.devices.is_empty() || self.opts.devices.contains(&f.name))
            .collect();

        // Devices that went away, or were created again (new ifindex): drop their programs.
        tracked.retain(|name, t| {
            let keep = found.iter().any(|f| &f.name == name && f.ifindex == t.found.ifindex);
            if !keep {
                tracing::info!(device = %name, "device gone; detaching");
            }
            keep
        });

        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut devices = Vec::new();
        for f in found {
            let t0 = Instant::now();
            let (source, state) = match &f.source {
                Source::Uapi(path) => (ErrorSource::Uapi, uapi::get(path, &f.name, &f.implementation, now).map_err(|e| e.to_string())),
                Source::Netlink => (ErrorSource::Netlink, netlink::get(&f.name).map_err(|e| e.to_string())),
            };
            *spent.entry(source).or_default() += t0.elapsed();
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    self.error(source, format_args!("reading device {}: {e}", f.name));
                    continue;
                }
            };

            let t0 = Instant::now();
            let t = tracked.entry(f.name.clone()).or_insert_with(|| Tracked { found: f.clone(), probe: None, routed: HashSet::new(), attach_error: None });
            if t.probe.is_none() {
                match DeviceProbe::load(self.opts.probe).and_then(|mut p| p.attach(&f.name).map(|_| p)) {
                    Ok(p) => {
                        tracing::info!(device = %f.name, implementation = %f.implementation, "programs attached");
                        t.probe = Some(p);
                        t.attach_error = None;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        if t.attach_error.as_ref() != Some(&msg) {
                            self.error(ErrorSource::Bpf, format_args!("attaching to {}: {msg}", f.name));
                            t.attach_error = Some(msg);
                        }
                    }
                }
            }
            let mut snap = DeviceSnapshot {
                found: f,
                state,
                counters: HashMap::new(),
                unattributed: None,
                program_stats: Vec::new(),
                latency: Vec::new(),
                latency_stats: None,
                pending: 0,
            };
            if let Some(p) = t.probe.as_mut() {
                if let Err(e) = p.sync(&snap.state.peers).and_then(|_| p.set_listen_port(snap.state.listen_port)) {
                    self.error(ErrorSource::Bpf, format_args!("syncing maps of {}: {e:#}", snap.found.name));
                }
                self.follow_underlays(p, &mut t.routed, &snap.state);
                for peer in &snap.state.peers {
                    match p.peer_counters(&peer.public_key) {
                        Ok(Some(c)) => {
                            snap.counters.insert(peer.public_key, c);
                        }
                        Ok(None) => {}
                        Err(e) => self.error(ErrorSource::Bpf, format_args!("reading counters of {}: {e:#}", snap.found.name)),
                    }
                }
                match p.unattributed() {
                    Ok(u) => snap.unattributed = Some(u),
                    Err(e) => self.error(ErrorSource::Bpf, format_args!("reading counters of {}: {e:#}", snap.found.name)),
                }
                snap.program_stats = p.program_stats();
                match p.expire_pending(self.opts.pending_ttl).and_then(|n| Ok((n, p.latency_stats()?, p.histograms()?))) {
                    Ok((pending, stats, hist)) => {
                        snap.pending = pending;
                        snap.latency_stats = Some(stats);
                        snap.latency = hist;
                    }
                    Err(e) => self.error(ErrorSource::Bpf, format_args!("reading latency of {}: {e:#}", snap.found.name)),
                }
                p.flush_logs();
            }
            *spent.entry(ErrorSource::Bpf).or_default() += t0.elapsed();
            devices.push(snap);
        }
        drop(tracked);
        let mut durations: Vec<_> = spent.into_iter().collect();
        durations.sort();
        Snapshot {
            devices,
            durations,
            errors: ErrorSource::ALL.iter().map(|s| (*s, self.errors[*s as usize].load(Ordering::Relaxed))).collect(),
        }
    }
}
