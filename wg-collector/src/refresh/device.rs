//! One device's pass through the refresh: read WireGuard's state, make sure the programs are
//! attached, sync the maps with the peers, read the maps, derive the snapshot.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{derive::derive, snapshot::DeviceSnapshot, ErrorSource, Monitor};
use crate::{
    bpf::{DeviceProbe, PinDir, Reading},
    history::History,
    interfaces,
    names::Names,
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
}

impl Tracked {
    pub fn new(found: Found) -> Self {
        Self { found, probe: None, routed: HashSet::new(), attach_error: None }
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
    /// The snapshot of device `f`, or None when WireGuard's state could not be read.
    pub(super) fn device(&self, t: &mut Tracked, f: Found, pass: &mut Pass) -> Option<DeviceSnapshot> {
        let state = self.read_wireguard(&f, pass)?;
        let t0 = Instant::now();
        self.ensure_probe(t, &f);
        let reading = t.probe.as_mut().and_then(|p| self.measure(p, &mut t.routed, &state));
        *pass.spent.entry(ErrorSource::Bpf).or_default() += t0.elapsed();
        Some(derive(pass.history, pass.names, f, state, reading, pass.now))
    }

    /// WireGuard's own state of the device, through its API.
    fn read_wireguard(&self, f: &Found, pass: &mut Pass) -> Option<Device> {
        let t0 = Instant::now();
        let (source, state) = match &f.api {
            Api::Uapi(path) => {
                (ErrorSource::Uapi, uapi::get(path, &f.name, &f.implementation, pass.now).map_err(|e| e.to_string()))
            }
            Api::Netlink => (ErrorSource::Netlink, netlink::get(&f.name).map_err(|e| e.to_string())),
        };
        *pass.spent.entry(source).or_default() += t0.elapsed();
        state.map_err(|e| self.error(source, format_args!("reading device {}: {e}", f.name))).ok()
    }

    /// Loads and attaches the programs if they are not yet; an error is logged once.
    fn ensure_probe(&self, t: &mut Tracked, f: &Found) {
        if t.probe.is_some() {
            return;
        }
        let pins = self.opts.pins.as_ref().map(|o| PinDir::new(o, &f.key()));
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
}
