//! Follows the WireGuard devices of the collector's network namespace and of those `--netns`
//! names, and reads them, as a pipeline over one [`Snapshot`]: follow the namespaces (retire
//! those gone) → per namespace, inside it: list the interfaces → discover → reconcile (detach
//! and unpin what is gone) → per device: read WireGuard → attach → sync the maps → read the
//! maps → derive (history, pools, names).
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
    collections::{BTreeMap, HashMap},
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
pub use snapshot::{DeviceLink, DeviceSnapshot, ErrorSource, Snapshot};

use crate::{
    bpf::{self, PinOptions, ProbeOptions},
    history::History,
    links::{self, Links},
    names::Names,
    netns::{self, Namespace, Own, Selection},
    wireguard::discovery::{self, Found},
};

/// Where a device's underlay programs go (`--underlay`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Underlays {
    /// The interfaces the peers' endpoints are routed through.
    Routed,
    /// These interfaces.
    Named(Vec<String>),
    /// None (`--underlay none`): counting on the WireGuard interface alone, at the least cost.
    Off,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub uapi_dir: PathBuf,
    /// Only these devices (all when empty).
    pub devices: Vec<String>,
    pub probe: ProbeOptions,
    /// How long a packet may wait for its answer before the collector forgets it.
    pub pending_ttl: Duration,
    /// Where the underlay programs go.
    pub underlays: Underlays,
    /// Where the programs and maps are pinned (None: they end with the collector).
    pub pins: Option<PinOptions>,
    /// Network namespaces to read besides the collector's own (`--netns`).
    pub netns: Selection,
    /// What logs must not show (`--redact`).
    pub redact: crate::redact::Redact,
}

pub struct Monitor {
    opts: Options,
    /// The collector's own namespaces; None where /proc cannot tell them (then only its own
    /// network namespace is read).
    own: Option<Own>,
    /// The link states of the collector's own namespace, which the link-event thread feeds.
    links: Arc<Links>,
    flight: SingleFlight<Snapshot>,
    state: Mutex<State>,
    errors: [AtomicU64; ErrorSource::ALL.len()],
    /// Netlink dumps interrupted by changes to their device, and read again.
    dump_retries: AtomicU64,
}

/// What refreshes share, behind one lock.
struct State {
    /// Per namespace, by its `netns` label (None: the collector's own, always first).
    spaces: BTreeMap<Option<String>, Space>,
    names: Names,
    /// Whether stale pin directories were looked for (once, at the first refresh).
    swept: bool,
}

/// One network namespace the collector follows: its devices and what it remembers of them.
struct Space {
    ns: Namespace,
    tracked: BTreeMap<String, Tracked>,
    history: History,
    links: Arc<Links>,
    /// Where its userspace devices' UAPI sockets may be.
    uapi_dirs: Vec<PathBuf>,
}

impl Space {
    fn new(ns: Namespace, links: Arc<Links>, uapi_dirs: Vec<PathBuf>) -> Self {
        Space { ns, tracked: BTreeMap::new(), history: History::default(), links, uapi_dirs }
    }
}

// The Collector that holds it must be Debug; its state is not worth printing.
impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Monitor")
    }
}

impl Monitor {
    pub fn new(opts: Options, names: Names) -> Self {
        let own = Own::read()
            .map_err(|e| tracing::warn!("/proc/self/ns not readable ({e}): only this network namespace is read"))
            .ok();
        let links = Arc::<Links>::default();
        let ns = own.as_ref().map_or(Namespace::own(0), |o| Namespace::own(o.net));
        let mut spaces = BTreeMap::new();
        spaces.insert(None, Space::new(ns, links.clone(), vec![opts.uapi_dir.clone()]));
        Self {
            opts,
            own,
            links,
            flight: SingleFlight::default(),
            state: Mutex::new(State { spaces, names, swept: false }),
            errors: Default::default(),
            dump_retries: AtomicU64::new(0),
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
        let State { spaces, names, swept } = &mut *guard;
        if let Err(e) = names.refresh() {
            tracing::warn!("names not re-read, keeping the old ones: {e}");
        }
        let mut spent: HashMap<ErrorSource, Duration> = HashMap::new();
        if !self.opts.netns.is_own_only() {
            // Looking for namespaces (with `all`, a look at every process) is the netns source's time.
            let t0 = Instant::now();
            self.follow_namespaces(spaces);
            spent.insert(ErrorSource::Netns, t0.elapsed());
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (mut devices, mut links, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for space in spaces.values_mut() {
            let Space { ns, tracked, history, links: space_links, uapi_dirs } = space;
            let mut pass = Pass { history, names, now, spent: Default::default() };
            match ns.run(|| self.pass(ns, tracked, space_links, uapi_dirs, &mut pass)) {
                Ok(Some((found, seen))) => {
                    keys.extend(found);
                    devices.extend(seen);
                }
                // The interfaces could not be listed (logged): nothing was changed.
                Ok(None) => {}
                Err(e) => self.error(ErrorSource::Netns, format_args!("entering network namespace {}: {e}", label(ns))),
            }
            for (source, d) in pass.spent {
                *spent.entry(source).or_default() += d;
            }
            let netns = &ns.label;
            links.extend(space_links.all().into_iter().map(|(name, state)| DeviceLink {
                netns: netns.clone(),
                name,
                state,
            }));
        }
        if !*swept {
            self.sweep(&keys);
            *swept = true;
        }
        let mut durations: Vec<_> = spent.into_iter().collect();
        durations.sort();
        drop(guard);
        Snapshot {
            began,
            wall: now,
            devices,
            durations,
            errors: ErrorSource::ALL.iter().map(|s| (*s, self.errors[*s as usize].load(Ordering::Relaxed))).collect(),
            dump_retries: self.dump_retries.load(Ordering::Relaxed),
            links,
        }
    }

    /// One namespace's part of a refresh, run inside it: the keys of the devices found, and
    /// the snapshots of those that could be read. None when its interfaces could not be
    /// listed (then nothing is detached on the strength of it).
    fn pass(
        &self,
        ns: &Namespace,
        tracked: &mut BTreeMap<String, Tracked>,
        links: &Links,
        uapi_dirs: &[PathBuf],
        pass: &mut Pass,
    ) -> Option<(Vec<String>, Vec<DeviceSnapshot>)> {
        let t0 = Instant::now();
        let since = links.mark();
        let interfaces = links::dump();
        *pass.spent.entry(ErrorSource::Netlink).or_default() += t0.elapsed();
        let interfaces = interfaces
            .map_err(|e| self.error(ErrorSource::Netlink, format_args!("listing the interfaces of {}: {e}", label(ns))))
            .ok()?;
        let own = self.own.map(|o| o.net);
        let found: Vec<Found> =
            discovery::discover(&interfaces, uapi_dirs, own.and(Some(ns.inode)), ns.label.as_deref())
                .into_iter()
                .filter(|f| self.opts.devices.is_empty() || self.opts.devices.contains(&f.name))
                .collect();
        for f in &found {
            links.follow(&f.name, Some((f.ifindex, interfaces.iter().any(|i| i.ifindex == f.ifindex && i.up))));
        }
        links.check(&interfaces, since);
        self.reconcile(tracked, &found);
        let keys = found.iter().map(Found::key).collect();
        let mut devices = Vec::new();
        for f in found {
            let t = tracked.entry(f.name.clone()).or_insert_with(|| Tracked::new(f.clone()));
            devices.extend(self.device(t, f, pass));
        }
        Some((keys, devices))
    }

    /// Brings the followed namespaces in line with those there are: a new one is opened, one
    /// gone (or whose name now means another) is retired. Only with `--netns`.
    fn follow_namespaces(&self, spaces: &mut BTreeMap<Option<String>, Space>) {
        let Some(own) = self.own.as_ref() else { return };
        let seen = netns::list(&self.opts.netns, own);
        let stale: Vec<Option<String>> = spaces
            .iter()
            .filter(|(l, s)| l.is_some() && !seen.iter().any(|x| l.as_ref() == Some(&x.label) && x.inode == s.ns.inode))
            .map(|(l, _)| l.clone())
            .collect();
        for l in stale {
            if let Some(space) = spaces.remove(&l) {
                self.retire(space);
            }
        }
        for x in seen {
            let dirs = discovery::uapi_dirs(&self.opts.uapi_dir, &x.roots);
            match spaces.get_mut(&Some(x.label.clone())) {
                Some(space) => space.uapi_dirs = dirs,
                None => match Namespace::open(&x) {
                    Ok(ns) => {
                        tracing::info!(netns = %x.label, path = %x.path.display(), "following network namespace");
                        spaces.insert(Some(x.label), Space::new(ns, Arc::default(), dirs));
                    }
                    // Gone since it was listed (a process that ended): the next look decides.
                    Err(e) => tracing::debug!(netns = %x.label, "not opened: {e}"),
                },
            }
        }
    }

    /// Lets go of a namespace that is gone: inside it once more, its programs are detached
    /// and their pins removed; then its fd is closed, and the kernel may free it.
    fn retire(&self, space: Space) {
        let Space { ns, tracked, .. } = space;
        tracing::info!(netns = %label(&ns), devices = tracked.len(), "network namespace gone; detaching");
        let left = ns.run(|| {
            for (name, t) in tracked {
                self.forget(&name, t, true);
            }
        });
        if let Err(e) = left {
            self.error(ErrorSource::Netns, format_args!("entering network namespace {} to detach: {e}", label(&ns)));
        }
    }

    /// Drops the programs of devices that went away (and unpins them) or were created again
    /// (their pins stay: the next load adopts the maps, so the counts go on).
    fn reconcile(&self, tracked: &mut BTreeMap<String, Tracked>, found: &[Found]) {
        let names: Vec<String> = tracked.keys().cloned().collect();
        for name in names {
            let fate = reconcile::fate(&name, tracked[&name].found.ifindex, found);
            match fate {
                Fate::Keep => continue,
                Fate::Replaced => tracing::info!(device = %name, "device created again; detaching"),
                Fate::Gone => tracing::info!(device = %name, "device gone; detaching"),
            }
            if let Some(t) = tracked.remove(&name) {
                self.forget(&name, t, fate == Fate::Gone);
            }
        }
    }

    /// Drops a device's programs (detaching them), and with `unpin` its pins.
    fn forget(&self, name: &str, t: Tracked, unpin: bool) {
        if unpin {
            if let Some(dir) = t.probe.as_ref().and_then(|p| p.pin_dir()) {
                if let Err(e) = dir.remove() {
                    self.error(ErrorSource::Bpf, format_args!("device {name}: {e:#}"));
                }
            }
        }
        drop(t);
    }

    /// Unpins the maps of devices that went away while no collector ran (when following
    /// every device, and pinning). `keys` are those of the devices found ([`Found::key`]).
    fn sweep(&self, keys: &[String]) {
        let Some(pins) = self.opts.pins.as_ref().filter(|_| self.opts.devices.is_empty()) else { return };
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        match bpf::sweep(&pins.root, &keys) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(devices = ?gone, "unpinned the maps of devices that are gone")
            }
            Ok(_) => {}
            Err(e) => self.error(ErrorSource::Bpf, format_args!("sweeping {}: {e:#}", pins.root.display())),
        }
    }
}

/// How logs name a namespace.
fn label(ns: &Namespace) -> &str {
    ns.label.as_deref().unwrap_or("(the collector's own)")
}
