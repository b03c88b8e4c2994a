//! One device's pass through the refresh: read WireGuard's state, make sure the programs are
//! attached, sync the maps with the peers, read the maps, derive the snapshot.
//!
//! When WireGuard's state cannot be read (a UAPI socket that hangs or answers garbage, a
//! netlink error), the device stays on the page with the last state read: its peers keep
//! their live eBPF counters and WireGuard's own counters stay at their last values; only a
//! reading that succeeds and no longer lists a peer removes it. The snapshot says how old
//! that state is. A userspace device whose read failed is read next on a thread of its own,
//! which later refreshes collect when it is done: a hung daemon costs one bounded wait, not
//! one per refresh.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    derive::{derive, State},
    snapshot::DeviceSnapshot,
    ErrorSource, Monitor, Underlays,
};
use crate::{
    bpf::{DeviceProbe, PinDir, Reading},
    history::History,
    interfaces,
    names::Names,
    redact::Redact,
    wireguard::{
        discovery::{Api, Found},
        netlink, uapi, Device,
    },
};

/// A device the collector follows, and its programs once attached.
pub struct Tracked {
    pub found: Found,
    pub probe: Option<DeviceProbe>,
    /// Endpoints whose underlay interface was looked up (the route lookup is done once).
    routed: HashSet<SocketAddr>,
    /// The last attach error, so it is logged once, not at every refresh.
    attach_error: Option<String>,
    /// WireGuard's state as last derived (shared with the snapshot that shows it), and when it
    /// was read (time since the Unix epoch).
    last: Option<(Arc<Device>, Duration)>,
    /// Whether the last reading failed: the next one goes to a thread of its own.
    failing: bool,
    /// That reading, under way, and when it began.
    background: Option<(JoinHandle<Result<Device, ReadError>>, Duration)>,
    /// Readings that failed, by kind.
    read_errors: BTreeMap<&'static str, u64>,
}

/// Why WireGuard's state could not be read: its kind (the `kind` label) and the whole story.
pub struct ReadError {
    kind: &'static str,
    text: String,
}

impl ReadError {
    fn uapi(e: uapi::UapiError, r: &Redact) -> Self {
        ReadError { kind: e.kind(), text: e.redacted(r) }
    }
}

impl From<netlink::NetlinkError> for ReadError {
    fn from(e: netlink::NetlinkError) -> Self {
        ReadError { kind: e.kind(), text: e.to_string() }
    }
}

impl Tracked {
    pub fn new(found: Found) -> Self {
        Self {
            found,
            probe: None,
            routed: HashSet::new(),
            attach_error: None,
            last: None,
            failing: false,
            background: None,
            read_errors: BTreeMap::new(),
        }
    }
}

/// What a refresh carries from device to device.
pub struct Pass<'a> {
    pub history: &'a mut History,
    pub names: &'a Names,
    /// Time since the Unix epoch.
    pub now: Duration,
    /// Time spent per source.
    pub spent: HashMap<ErrorSource, Duration>,
}

impl Monitor {
    /// The snapshot of device `f`; None only while WireGuard's state was never read.
    pub(super) fn device(&self, t: &mut Tracked, f: Found, pass: &mut Pass) -> Option<DeviceSnapshot> {
        let (state, read_at) = self.wireguard_state(t, &f, pass)?;
        let t0 = Instant::now();
        self.ensure_probe(t, &f);
        let device = match &state {
            State::Fresh(d) => d,
            State::Stale(d) => d.as_ref(),
        };
        let reading = t.probe.as_mut().and_then(|p| self.measure(p, &mut t.routed, device));
        *pass.spent.entry(ErrorSource::Bpf).or_default() += t0.elapsed();
        let mut snap = derive(pass.history, pass.names, f, state, reading, pass.now, read_at);
        snap.read_errors = t.read_errors.iter().map(|(k, n)| (*k, *n)).collect();
        t.last = Some((snap.state.clone(), read_at));
        self.log_changes(&snap);
        Some(snap)
    }

    /// Each configuration change the refresh saw, as a warning (`--redact` holds here too).
    fn log_changes(&self, d: &DeviceSnapshot) {
        let device = &d.found.name;
        for c in &d.lifecycle.changed {
            let value = self.opts.redact.change(c.field, &c.value);
            match c.peer {
                Some(peer) => {
                    tracing::warn!(%device, field = %c.field.label(), %peer, "configuration changed: {value}")
                }
                None => tracing::warn!(%device, field = %c.field.label(), "configuration changed: {value}"),
            }
        }
    }

    /// WireGuard's state of the device and when it was read: now, or while it cannot be read,
    /// the last state derived.
    fn wireguard_state(&self, t: &mut Tracked, f: &Found, pass: &mut Pass) -> Option<(State, Duration)> {
        let fresh = match t.background.take() {
            // Still waiting for the device: this refresh does not.
            Some((h, began)) if !h.is_finished() => {
                t.background = Some((h, began));
                None
            }
            Some((h, began)) => {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(ReadError { kind: "io", text: "the reading thread panicked".into() }));
                Some(self.counted(t, f, r).map(|d| (d, began)))
            }
            None => match (&f.api, t.failing) {
                (Api::Uapi(path), true) => {
                    let (path, name, imp, now) = (path.clone(), f.name.clone(), f.implementation.clone(), pass.now);
                    let redact = self.opts.redact;
                    let read = move || uapi::get(&path, &name, &imp, now).map_err(|e| ReadError::uapi(e, &redact));
                    match std::thread::Builder::new().name("uapi-read".into()).spawn(read) {
                        Ok(h) => t.background = Some((h, pass.now)),
                        Err(e) => {
                            let e = ReadError { kind: "io", text: format!("starting a reading thread: {e}") };
                            let _ = self.counted(t, f, Err(e));
                        }
                    }
                    None
                }
                _ => {
                    let r = self.read_wireguard(f, pass);
                    Some(self.counted(t, f, r).map(|d| (d, pass.now)))
                }
            },
        };
        let stale = || t.last.as_ref().map(|(d, at)| (State::Stale(d.clone()), *at));
        match fresh {
            Some(Ok((d, at))) => {
                t.failing = false;
                Some((State::Fresh(d), at))
            }
            Some(Err(())) => {
                t.failing = true;
                stale()
            }
            None => stale(),
        }
    }

    /// WireGuard's own state of the device, through its API.
    fn read_wireguard(&self, f: &Found, pass: &mut Pass) -> Result<Device, ReadError> {
        let t0 = Instant::now();
        let state = match &f.api {
            Api::Uapi(path) => {
                uapi::get(path, &f.name, &f.implementation, pass.now).map_err(|e| ReadError::uapi(e, &self.opts.redact))
            }
            Api::Netlink => netlink::get(&f.name)
                .map(|(d, interrupted)| {
                    self.dump_retries.fetch_add(interrupted.into(), std::sync::atomic::Ordering::Relaxed);
                    d
                })
                .map_err(ReadError::from),
        };
        *pass.spent.entry(source_of(f)).or_default() += t0.elapsed();
        state
    }

    /// A reading's result, its error counted (for the source, and for the device by kind) and
    /// logged.
    fn counted(&self, t: &mut Tracked, f: &Found, r: Result<Device, ReadError>) -> Result<Device, ()> {
        r.map_err(|e| {
            *t.read_errors.entry(e.kind).or_default() += 1;
            self.error(source_of(f), format_args!("reading device {}: {}", f.name, e.text))
        })
    }

    /// Loads and attaches the programs if they are not yet; an error is logged once.
    fn ensure_probe(&self, t: &mut Tracked, f: &Found) {
        if t.probe.is_some() {
            return;
        }
        let pins = self.opts.pins.as_ref().map(|o| PinDir::new(o, &f.key()));
        match DeviceProbe::load(self.opts.probe, pins).and_then(|mut p| p.attach(&f.name).map(|_| p)) {
            Ok(mut p) => {
                tracing::info!(device = %f.name, implementation = %f.implementation, "programs attached");
                if self.opts.underlays == Underlays::Off {
                    // Once per load: the links an earlier run pinned would go on running.
                    match p.detach_pinned_underlays() {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!(device = %f.name, links = n, "underlay programs an earlier collector pinned detached (--underlay none)")
                        }
                        Err(e) => self.error(ErrorSource::Bpf, format_args!("device {}: {e:#}", f.name)),
                    }
                }
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

    /// Brings the maps in line with the device's state, then reads them.
    fn measure(&self, p: &mut DeviceProbe, routed: &mut HashSet<SocketAddr>, state: &Device) -> Option<Reading> {
        if let Err(e) = p.sync(&state.peers).and_then(|_| p.set_listen_port(state.listen_port)) {
            self.error(ErrorSource::Bpf, format_args!("syncing maps of {}: {e:#}", state.name));
        }
        self.follow_underlays(p, routed, state);
        let reading = p.read(self.opts.pending_ttl);
        p.flush_logs();
        reading
            .map_err(|e| self.error(ErrorSource::Bpf, format_args!("reading the maps of {}: {e:#}", state.name)))
            .ok()
    }

    /// Attaches the underlay programs where the device's datagrams go: the `--underlay`
    /// interfaces, or the interface each peer endpoint is routed through (looked up once per
    /// endpoint).
    fn follow_underlays(&self, p: &mut DeviceProbe, routed: &mut HashSet<SocketAddr>, state: &Device) {
        let wanted = match &self.opts.underlays {
            Underlays::Off => return,
            Underlays::Named(names) => names.clone(),
            Underlays::Routed => {
                let mut found = Vec::new();
                for e in state.peers.iter().filter_map(|p| p.endpoint) {
                    if routed.insert(e) {
                        found.extend(interfaces::interface_for(e));
                    }
                }
                found
            }
        };
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
}

/// Where a device's state comes from, as the errors and durations say it.
fn source_of(f: &Found) -> ErrorSource {
    match f.api {
        Api::Uapi(_) => ErrorSource::Uapi,
        Api::Netlink => ErrorSource::Netlink,
    }
}
