//! Follows the WireGuard devices of this namespace: finds them, reads their state, attaches
//! the programs to each new device and keeps the maps in sync with its peers.
//!
//! `refresh` is called by the poll loop (so maps follow peers between scrapes) and by every
//! scrape (so a scrape always shows the state of that moment), unless `--scrape.max-age` lets
//! scrapes share a recent reading (`latest`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use wg_common::{
    latency::{HistKey, HistValue},
    protocol::{Invalid, MessageCounts, MESSAGE_TYPES},
    Counter, PeerCounters, Unattributed, DIRECTIONS,
};

use crate::{
    bpf::{self, DeviceProbe, LatencyStats, PinDir, PinOptions, ProbeOptions, ProgramStats},
    history::{History, Lifecycle},
    interfaces,
    links::{LinkState, Links},
    names::Names,
    pool::{self, Pool},
    wireguard::{
        discovery::{self, Found, Source},
        netlink, uapi, Device, Key, KeyMap,
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
    /// Where the programs and maps are pinned (None: they end with the collector).
    pub pins: Option<PinOptions>,
}

/// What one refresh saw of one device.
#[derive(Clone)]
pub struct DeviceSnapshot {
    pub found: Found,
    pub state: Device,
    /// eBPF counters per peer; empty when the programs are not attached.
    pub counters: KeyMap<PeerCounters>,
    pub unattributed: Option<[[Counter; Unattributed::ALL.len()]; DIRECTIONS]>,
    pub program_stats: Vec<ProgramStats>,
    /// Latency histogram entries with samples: (peer if known, key, value).
    pub latency: Vec<(Option<Key>, HistKey, HistValue)>,
    pub latency_stats: Option<LatencyStats>,
    /// Packets waiting for their answer now.
    pub pending: u64,
    /// Underlay messages per peer, and the device's own (peer unknown).
    pub messages: KeyMap<MessageCounts>,
    pub device_messages: Option<MessageCounts>,
    pub invalid: Option<[u64; Invalid::ALL.len()]>,
    /// Peers added and removed since start, endpoint changes per peer.
    pub lifecycle: Lifecycle,
    /// Peers whose last handshake is younger than 180 s.
    pub active: usize,
    /// Address pools of the interface's own subnets: IPv4, IPv6.
    pub pools: (Option<Pool>, Option<Pool>),
    /// Friendly names of the peers that have one.
    pub names: KeyMap<String>,
}

/// What one refresh saw.
#[derive(Clone)]
pub struct Snapshot {
    /// When the refresh began reading.
    pub began: Instant,
    pub devices: Vec<DeviceSnapshot>,
    /// Time spent per source in this refresh.
    pub durations: Vec<(ErrorSource, Duration)>,
    /// Errors per source since start.
    pub errors: Vec<(ErrorSource, u64)>,
    /// Link state of every device seen since start, gone ones included (down).
    pub links: Vec<(String, LinkState)>,
}

struct Tracked {
    found: Found,
    probe: Option<DeviceProbe>,
    /// Endpoints whose underlay interface was looked up (the route lookup is done once).
    routed: HashSet<SocketAddr>,
    /// The last attach error, so it is logged once, not at every refresh.
    attach_error: Option<String>,
}

/// A handshake younger than this means a live session (REJECT_AFTER_TIME).
const ACTIVE_WITHIN: Duration = Duration::from_secs(180);

pub struct Monitor {
    opts: Options,
    links: Arc<Links>,
    /// Refreshes asked for at once share one (see [`Monitor::refresh`]).
    flight: Mutex<Flight>,
    landed: Condvar,
    state: Mutex<State>,
    errors: [AtomicU64; 3],
}

/// Refresh numbers: the last one started, the last one done and what it saw.
#[derive(Default)]
struct Flight {
    started: u64,
    done: u64,
    running: bool,
    /// When the running refresh began.
    running_began: Option<Instant>,
    last: Option<Arc<Snapshot>>,
}

/// What refreshes share, behind one lock.
struct State {
    tracked: BTreeMap<String, Tracked>,
    history: History,
    names: Names,
    /// Whether stale pin directories were looked for (once, at the first refresh).
    swept: bool,
}

// The Collector that holds it must be Debug; its state is not worth printing.
impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Monitor")
    }
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
                    wanted.extend(interfaces::interface_for(e));
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

    pub fn new(opts: Options, names: Names) -> Self {
        Self {
            opts,
            links: Arc::default(),
            flight: Mutex::default(),
            landed: Condvar::new(),
            state: Mutex::new(State { tracked: BTreeMap::new(), history: History::default(), names, swept: false }),
            errors: Default::default(),
        }
    }

    /// The link states, for following the kernel's link events (see links.rs).
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    fn error(&self, source: ErrorSource, what: impl std::fmt::Display) {
        self.errors[source as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = source.label(), "{what}");
    }

    /// A refresh that started after this call: the state of this moment. Callers that come
    /// while one runs wait for the next and share it, so any number of concurrent scrapes
    /// costs at most one refresh running and one waiting, and the poll loop's map sync is
    /// never queued behind a crowd of scrapes.
    pub fn refresh(&self) -> Arc<Snapshot> {
        self.reading(None)
    }

    /// A reading that began at most `max_age` ago: the last one if it is young enough, else
    /// the one under way if it is, else a new one (zero = always a new one, as `refresh`).
    /// Scrapes use this with `--scrape.max-age`, so that where WireGuard's state is slow to
    /// read (wireguard-go at 10k peers: ~80 ms) they share the poll loop's readings.
    pub fn latest(&self, max_age: Duration) -> Arc<Snapshot> {
        self.reading(Some(max_age).filter(|a| !a.is_zero()))
    }

    fn reading(&self, max_age: Option<Duration>) -> Arc<Snapshot> {
        let mut f = self.flight.lock().unwrap_or_else(|e| e.into_inner());
        let young = |t: Instant| max_age.is_some_and(|a| t.elapsed() <= a);
        let want = match &f.last {
            Some(last) if young(last.began) => return last.clone(),
            _ if f.running && f.running_began.is_some_and(young) => f.started,
            _ => f.started + 1,
        };
        loop {
            if f.done >= want {
                if let Some(s) = &f.last {
                    return s.clone();
                }
            }
            if !f.running {
                f.running = true;
                f.running_began = Some(Instant::now());
                f.started += 1;
                let n = f.started;
                drop(f);
                // Cleared on unwind too, so a panicking refresh cannot wedge every caller.
                struct Land<'a>(&'a Monitor, u64, Option<Arc<Snapshot>>);
                impl Drop for Land<'_> {
                    fn drop(&mut self) {
                        let mut f = self.0.flight.lock().unwrap_or_else(|e| e.into_inner());
                        f.running = false;
                        f.done = self.1;
                        if let Some(s) = self.2.take() {
                            f.last = Some(s);
                        }
                        self.0.landed.notify_all();
                    }
                }
                let mut land = Land(self, n, None);
                let snap = Arc::new(self.refresh_now());
                land.2 = Some(snap.clone());
                drop(land);
                return snap;
            }
            f = self.landed.wait(f).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Reads every device, brings the maps in line with it and returns what it saw.
    fn refresh_now(&self) -> Snapshot {
        let began = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { tracked, history, names, swept } = &mut *guard;
        if let Err(e) = names.refresh() {
            tracing::warn!("names not re-read, keeping the old ones: {e}");
        }
        let mut spent: HashMap<ErrorSource, Duration> = HashMap::new();
        let found: Vec<Found> = discovery::discover(&self.opts.uapi_dir)
            .into_iter()
            .filter(|f| self.opts.devices.is_empty() || self.opts.devices.contains(&f.name))
            .collect();

        for f in &found {
            self.links.follow(&f.name);
        }
        for (name, _) in self.links.all() {
            self.links.check(&name);
        }

        // Devices that went away: drop their programs and unpin them. Created again (new
        // ifindex): drop the programs, keep the pins; the next load adopts the maps, so the
        // counts go on, and attaches anew.
        tracked.retain(|name, t| {
            let same_name = found.iter().any(|f| &f.name == name);
            let keep = found.iter().any(|f| &f.name == name && f.ifindex == t.found.ifindex);
            if !keep {
                tracing::info!(device = %name, "device {}; detaching", if same_name { "created again" } else { "gone" });
            }
            if !same_name {
                if let Some(dir) = t.probe.as_ref().and_then(|p| p.pin_dir()) {
                    if let Err(e) = dir.remove() {
                        self.error(ErrorSource::Bpf, format_args!("device {name}: {e:#}"));
                    }
                }
            }
            keep
        });
        if !*swept && self.opts.devices.is_empty() {
            // Pins of devices that went away while no collector ran.
            if let Some(pins) = &self.opts.pins {
                let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
                match bpf::sweep(&pins.root, &names) {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(devices = ?gone, "unpinned the maps of devices that are gone")
                    }
                    Ok(_) => {}
                    Err(e) => self.error(ErrorSource::Bpf, format_args!("sweeping {}: {e:#}", pins.root.display())),
                }
            }
            *swept = true;
        }

        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut devices = Vec::new();
        for f in found {
            let t0 = Instant::now();
            let (source, state) = match &f.source {
                Source::Uapi(path) => {
                    (ErrorSource::Uapi, uapi::get(path, &f.name, &f.implementation, now).map_err(|e| e.to_string()))
                }
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
            let t = tracked.entry(f.name.clone()).or_insert_with(|| Tracked {
                found: f.clone(),
                probe: None,
                routed: HashSet::new(),
                attach_error: None,
            });
            if t.probe.is_none() {
                let pins = self.opts.pins.as_ref().map(|o| PinDir::new(o, &f.name));
                match DeviceProbe::load(self.opts.probe, pins).and_then(|mut p| p.attach(&f.name).map(|_| p)) {
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
                counters: KeyMap::default(),
                unattributed: None,
                program_stats: Vec::new(),
                latency: Vec::new(),
                latency_stats: None,
                pending: 0,
                messages: KeyMap::default(),
                device_messages: None,
                invalid: None,
                lifecycle: Lifecycle::default(),
                active: 0,
                pools: (None, None),
                names: KeyMap::default(),
            };
            if let Some(p) = t.probe.as_mut() {
                if let Err(e) = p.sync(&snap.state.peers).and_then(|_| p.set_listen_port(snap.state.listen_port)) {
                    self.error(ErrorSource::Bpf, format_args!("syncing maps of {}: {e:#}", snap.found.name));
                }
                self.follow_underlays(p, &mut t.routed, &snap.state);
                match p.all_peer_counters() {
                    Ok(c) => snap.counters = c,
                    Err(e) => {
                        self.error(ErrorSource::Bpf, format_args!("reading counters of {}: {e:#}", snap.found.name))
                    }
                }
                match p.unattributed() {
                    Ok(u) => snap.unattributed = Some(u),
                    Err(e) => {
                        self.error(ErrorSource::Bpf, format_args!("reading counters of {}: {e:#}", snap.found.name))
                    }
                }
                snap.program_stats = p.program_stats();
                match p.expire_pending(self.opts.pending_ttl).and_then(|n| Ok((n, p.latency_stats()?, p.histograms()?)))
                {
                    Ok((pending, stats, hist)) => {
                        snap.pending = pending;
                        snap.latency_stats = Some(stats);
                        snap.latency = hist;
                    }
                    Err(e) => {
                        self.error(ErrorSource::Bpf, format_args!("reading latency of {}: {e:#}", snap.found.name))
                    }
                }
                match p.messages(&snap.counters).and_then(|m| Ok((m, p.invalid()?))) {
                    Ok(((peers, device), invalid)) => {
                        snap.messages = peers;
                        snap.device_messages = Some(device);
                        snap.invalid = Some(invalid);
                    }
                    Err(e) => {
                        self.error(ErrorSource::Bpf, format_args!("reading messages of {}: {e:#}", snap.found.name))
                    }
                }
                p.flush_logs();
            }
            *spent.entry(ErrorSource::Bpf).or_default() += t0.elapsed();
            snap.lifecycle = history.observe(&snap.state);
            for c in &snap.lifecycle.changed {
                match c.peer {
                    Some(peer) => {
                        tracing::warn!(device = %snap.found.name, field = %c.field.label(), %peer, "configuration changed: {}", c.value)
                    }
                    None => {
                        tracing::warn!(device = %snap.found.name, field = %c.field.label(), "configuration changed: {}", c.value)
                    }
                }
            }
            monotonic(history, &mut snap);
            snap.active = snap
                .state
                .peers
                .iter()
                .filter(|p| p.last_handshake.is_some_and(|t| now.saturating_sub(t) < ACTIVE_WITHIN))
                .count();
            let used: Vec<IpNet> = snap.state.peers.iter().flat_map(|p| p.allowed_ips.iter().copied()).collect();
            snap.pools = pool::pools(&interfaces::addresses_of(&snap.found.name), &used);
            snap.names = snap
                .state
                .peers
                .iter()
                .filter_map(|p| Some((p.public_key, names.get(&p.public_key)?.to_string())))
                .collect();
            devices.push(snap);
        }
        drop(guard);
        let mut durations: Vec<_> = spent.into_iter().collect();
        durations.sort();
        Snapshot {
            began,
            devices,
            durations,
            errors: ErrorSource::ALL.iter().map(|s| (*s, self.errors[*s as usize].load(Ordering::Relaxed))).collect(),
            links: self.links.all(),
        }
    }
}

/// Rewrites the snapshot's counters as values that never go backwards within this process
/// (see history.rs). Ids: per peer 0–1 WireGuard's bytes, 2–5 our packets and bytes, 10–19
/// messages; per device 0–5 unattributed packets, 100– invalid, 200– the device's messages.
fn monotonic(h: &mut History, snap: &mut DeviceSnapshot) {
    const _: () = assert!(10 + DIRECTIONS * MESSAGE_TYPES <= crate::history::PEER_COUNTER_IDS);
    let dev = snap.found.name.clone();
    // Observed just before, so the device is there.
    if let Some(mut peers) = h.peers_of(&dev) {
        for p in &mut snap.state.peers {
            let Some(mut mono) = peers.get(&p.public_key) else { continue };
            p.rx_bytes = mono.update(0, p.rx_bytes);
            p.tx_bytes = mono.update(1, p.tx_bytes);
            if let Some(c) = snap.counters.get_mut(&p.public_key) {
                for (d, dc) in c.dir.iter_mut().enumerate() {
                    let id = 2 + 2 * d as u32;
                    dc.packets = mono.update(id, dc.packets);
                    dc.bytes = mono.update(id + 1, dc.bytes);
                }
            }
            if let Some(m) = snap.messages.get_mut(&p.public_key) {
                for (d, row) in m.counts.iter_mut().enumerate() {
                    for (t, n) in row.iter_mut().enumerate() {
                        *n = mono.update(10 + (d * MESSAGE_TYPES + t) as u32, *n);
                    }
                }
            }
        }
    }
    if let Some(u) = &mut snap.unattributed {
        for (d, row) in u.iter_mut().enumerate() {
            for (r, c) in row.iter_mut().enumerate() {
                c.packets = h.device_counter(&dev, (d * Unattributed::ALL.len() + r) as u32, c.packets);
            }
        }
    }
    if let Some(inv) = &mut snap.invalid {
        for (r, n) in inv.iter_mut().enumerate() {
            *n = h.device_counter(&dev, 100 + r as u32, *n);
        }
    }
    if let Some(m) = &mut snap.device_messages {
        for (d, row) in m.counts.iter_mut().enumerate() {
            for (t, n) in row.iter_mut().enumerate() {
                *n = h.device_counter(&dev, 200 + (d * MESSAGE_TYPES + t) as u32, *n);
            }
        }
    }
}
