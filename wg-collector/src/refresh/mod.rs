//! Follows the WireGuard devices of this namespace and reads them, as a pipeline over one
//! [`Snapshot`]: discover → reconcile (detach and unpin what is gone) → per device: read
//! WireGuard → attach → sync the maps → read the maps → derive (history, pools, names).
//!
//! `refresh` is called by the poll loop (so maps follow peers between scrapes) and by every
//! scrape (so a scrape always shows the state of that moment), unless `--scrape.max-age` lets
//! scrapes share a recent reading (`latest`). Concurrent callers share runs (flight.rs).

mod derive;
mod device;
mod flight;
mod reconcile;
mod snapshot;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use device::{Pass, Tracked};
pub use flight::SingleFlight;
use reconcile::Fate;
pub use snapshot::{DeviceSnapshot, ErrorSource, Snapshot};

use crate::{
    bpf::{self, PinOptions, ProbeOptions},
    history::History,
    links::Links,
    names::Names,
    wireguard::discovery::{self, Found},
};

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

pub struct Monitor {
    opts: Options,
    links: Arc<Links>,
    flight: SingleFlight<Snapshot>,
    state: Mutex<State>,
    errors: [AtomicU64; ErrorSource::ALL.len()],
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
    pub fn new(opts: Options, names: Names) -> Self {
        Self {
            opts,
            links: Arc::default(),
            flight: SingleFlight::default(),
            state: Mutex::new(State { tracked: BTreeMap::new(), history: History::default(), names, swept: false }),
            errors: Default::default(),
        }
    }

    /// The link states, for following the kernel's link events (see links.rs).
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// A refresh that started after this call: the state of this moment. Callers that come
    /// while one runs wait for the next and share it, so any number of concurrent scrapes
    /// costs at most one refresh running and one waiting, and the poll loop's map sync is
    /// never queued behind a crowd of scrapes.
    pub fn refresh(&self) -> Arc<Snapshot> {
        self.flight.get(None, || self.refresh_now())
    }

    /// A reading that began at most `max_age` ago: the last one if it is young enough, else
    /// the one under way if it is, else a new one (zero = always a new one, as `refresh`).
    /// Scrapes use this with `--scrape.max-age`, so that where WireGuard's state is slow to
    /// read (wireguard-go at 10k peers: ~80 ms) they share the poll loop's readings.
    pub fn latest(&self, max_age: Duration) -> Arc<Snapshot> {
        self.flight.get(Some(max_age).filter(|a| !a.is_zero()), || self.refresh_now())
    }

    fn error(&self, source: ErrorSource, what: impl std::fmt::Display) {
        self.errors[source as usize].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = source.label(), "{what}");
    }

    /// Reads every device, brings the maps in line with it and returns what it saw.
    fn refresh_now(&self) -> Snapshot {
        let began = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { tracked, history, names, swept } = &mut *guard;
        if let Err(e) = names.refresh() {
            tracing::warn!("names not re-read, keeping the old ones: {e}");
        }
        let found = self.discover();
        self.reconcile(tracked, &found);
        if !*swept {
            self.sweep(&found);
            *swept = true;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut pass = Pass { history, names, now, spent: Default::default() };
        let mut devices = Vec::new();
        for f in found {
            let t = tracked.entry(f.name.clone()).or_insert_with(|| Tracked::new(f.clone()));
            devices.extend(self.device(t, f, &mut pass));
        }
        let mut durations: Vec<_> = pass.spent.into_iter().collect();
        durations.sort();
        drop(guard);
        Snapshot {
            began,
            wall: now,
            devices,
            durations,
            errors: ErrorSource::ALL.iter().map(|s| (*s, self.errors[*s as usize].load(Ordering::Relaxed))).collect(),
            links: self.links.all(),
        }
    }

    /// The devices to follow (all, or the `--device` ones), their links followed.
    fn discover(&self) -> Vec<Found> {
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
        found
    }

    /// Drops the programs of devices that went away (and unpins them) or were created again
    /// (their pins stay: the next load adopts the maps, so the counts go on).
    fn reconcile(&self, tracked: &mut BTreeMap<String, Tracked>, found: &[Found]) {
        tracked.retain(|name, t| {
            let fate = reconcile::fate(name, t.found.ifindex, found);
            match fate {
                Fate::Keep => return true,
                Fate::Replaced => tracing::info!(device = %name, "device created again; detaching"),
                Fate::Gone => tracing::info!(device = %name, "device gone; detaching"),
            }
            if fate == Fate::Gone {
                if let Some(dir) = t.probe.as_ref().and_then(|p| p.pin_dir()) {
                    if let Err(e) = dir.remove() {
                        self.error(ErrorSource::Bpf, format_args!("device {name}: {e:#}"));
                    }
                }
            }
            false
        });
    }

    /// Unpins the maps of devices that went away while no collector ran (when following
    /// every device, and pinning).
    fn sweep(&self, found: &[Found]) {
        let Some(pins) = self.opts.pins.as_ref().filter(|_| self.opts.devices.is_empty()) else { return };
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        match bpf::sweep(&pins.root, &names) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(devices = ?gone, "unpinned the maps of devices that are gone")
            }
            Ok(_) => {}
            Err(e) => self.error(ErrorSource::Bpf, format_args!("sweeping {}: {e:#}", pins.root.display())),
        }
    }
}
