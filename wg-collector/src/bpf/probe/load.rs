//! Loading: the programs verified, the maps sized, pinned or adopted from the pins an
//! earlier collector left, and each map opened with the types wg_common::maps gives it.

use std::{collections::HashSet, net::IpAddr, os::fd::AsFd};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap},
    programs::SchedClassifier,
    util::nr_cpus,
    Ebpf, EbpfLoader, Pod,
};
use aya_log::EbpfLogger;
use ipnet::IpNet;
use wg_common::{
    maps::{self, MapDef},
    names,
};

use super::{program, DeviceProbe, Maps, ProbeOptions, Synced, PROGRAMS, UNDERLAY_PROGRAMS};
use crate::{
    bpf::{
        endpoint_places::EndpointPlaces, host_block::HostBlock, mapped::MappedArray, object, pending::PendingTable,
        PinDir, SlotTable,
    },
    wireguard::Key,
};

impl DeviceProbe {
    /// Loads the programs into the kernel (verified, not attached yet).
    /// With `pins`, the maps are pinned there, or adopted from there when an earlier
    /// collector left them (see pins.rs).
    pub fn load(opts: ProbeOptions, pins: Option<PinDir>) -> Result<Self> {
        let sizes = map_sizes(&opts);
        let adopt = match &pins {
            Some(dir) => dir.prepare(&sizes)?,
            None => false,
        };
        let globals = Globals::of(&opts);
        let mut ebpf = loader(&globals, &sizes, pins.as_ref()).load(object()).context("loading the eBPF programs")?;
        let never_attached = [names::PROG_PATH_SETTLE];
        for name in PROGRAMS.iter().chain(&UNDERLAY_PROGRAMS).map(|(n, _)| *n).chain(never_attached) {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load().with_context(|| format!("verifying program {name}"))?;
        }
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("the programs' log records will not be shown: {e}");
                None
            }
        };
        let maps = open_maps(&mut ebpf, &opts, adopt)?;
        let mut meta = array::<maps::Meta>(&mut ebpf)?;
        let mut probe = Self {
            ebpf,
            logger,
            maps,
            synced: Synced {
                slots: SlotTable::new(opts.max_peers),
                prefixes: Default::default(),
                endpoints: Default::default(),
                block_followed: false,
                endpoints_placed: false,
                settled: Default::default(),
            },
            pins,
            underlays: HashSet::new(),
            expired: 0,
            cpus: nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?,
        };
        match probe.pins.clone() {
            Some(dir) if adopt => {
                probe.restore().with_context(|| format!("adopting the maps pinned in {}", dir.path().display()))?;
                tracing::info!(pins = %dir.path().display(), peers = probe.synced.slots.len(), "adopted pinned maps");
            }
            Some(dir) => dir.seal(&mut meta)?,
            None => {}
        }
        Ok(probe)
    }

    /// Reads back what an earlier collector put into the adopted maps: whose slot is which,
    /// which prefixes and endpoints the maps hold.
    fn restore(&mut self) -> Result<()> {
        let m = &self.maps;
        let owners =
            m.slot_keys.iter().map(|r| r.map(|(slot, key)| (slot, Key(key)))).collect::<Result<Vec<_>, _>>()?;
        self.synced.slots = SlotTable::restore(self.synced.slots.capacity(), owners);
        // Host addresses from the hashes, shorter prefixes from the tries (see sync.rs).
        let hosts = m.hosts_v4.iter().map(|r| r.map(|(a, s)| (IpAddr::from(a), 32, s)));
        let hosts = hosts.chain(m.hosts_v6.iter().map(|r| r.map(|(a, s)| (IpAddr::from(a), 128, s))));
        let tries = m.v4.iter().map(|r| r.map(|(k, s)| (IpAddr::from(k.data()), k.prefix_len() as u8, s)));
        let tries = tries.chain(m.v6.iter().map(|r| r.map(|(k, s)| (IpAddr::from(k.data()), k.prefix_len() as u8, s))));
        for item in hosts.chain(tries) {
            let (addr, len, slot) = item?;
            self.synced.prefixes.insert(IpNet::new(addr, len)?, slot);
        }
        self.synced.endpoints = m.endpoints.iter().collect::<Result<_, _>>()?;
        Ok(())
    }
}

/// The programs' settings, written into their read-only globals at load.
struct Globals {
    /// Disabled levels cost the programs one compare; aya_log_common::Level counts Error = 1
    /// up to Trace = 5, as log::LevelFilter does.
    log_level: u8,
    latency_sample_mask: u32,
    pending_mask: u32,
    endpoint_places_mask: u32,
    delay_enabled: u32,
}

impl Globals {
    fn of(opts: &ProbeOptions) -> Self {
        Self {
            log_level: opts.log_level as u8,
            latency_sample_mask: opts.latency_sample - 1,
            pending_mask: opts.max_pending - 1,
            endpoint_places_mask: endpoint_places(opts) - 1,
            delay_enabled: opts.delay as u32,
        }
    }
}

/// The loader with the programs' settings, the maps' sizes and, with pins, their paths.
fn loader<'a>(g: &'a Globals, sizes: &'a [(&'static str, u32)], pins: Option<&PinDir>) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global(aya_log::LEVEL, &g.log_level, true)
        .override_global("LATENCY_SAMPLE_MASK", &g.latency_sample_mask, true)
        .override_global("PENDING_MASK", &g.pending_mask, true)
        .override_global("ENDPOINT_PLACES_MASK", &g.endpoint_places_mask, true)
        .override_global("DELAY_ENABLED", &g.delay_enabled, true);
    for (name, entries) in sizes {
        loader.map_max_entries(name, *entries);
    }
    if let Some(dir) = pins {
        for name in names::PINNED {
            loader.map_pin_path(name, dir.map(name));
        }
    }
    loader
}

fn open_maps(ebpf: &mut Ebpf, opts: &ProbeOptions, adopt: bool) -> Result<Maps> {
    let counters = take::<maps::PeerCounters>(ebpf)?;
    let counters_fd = match &counters {
        Map::PerCpuArray(m) => m.fd().as_fd().try_clone_to_owned().context("duplicating the counters' fd")?,
        _ => anyhow::bail!("map {} is not a per-CPU array", names::PEER_COUNTERS),
    };
    Ok(Maps {
        hosts_v4: hash::<maps::HostsV4>(ebpf)?,
        hosts_v6: hash::<maps::HostsV6>(ebpf)?,
        host_block: HostBlock::new(array::<maps::HostBlockV4>(ebpf)?, array::<maps::HostBlockAt>(ebpf)?)?,
        v4: lpm::<maps::PeersV4>(ebpf)?,
        v6: lpm::<maps::PeersV6>(ebpf)?,
        counters: PerCpuArray::try_from(counters)?,
        counters_fd,
        unattributed: per_cpu_array::<maps::Unattributed>(ebpf)?,
        pending: PendingTable::new(mapped::<maps::Pending>(ebpf, opts.max_pending)?),
        hist: per_cpu_hash::<maps::LatencyHist>(ebpf)?,
        latency_stats: per_cpu_array::<maps::LatencyStats>(ebpf)?,
        endpoints: hash::<maps::Endpoints>(ebpf)?,
        endpoint_places: EndpointPlaces::new(mapped::<maps::EndpointPlaces>(ebpf, endpoint_places(opts))?, adopt),
        fifos: array::<maps::DelayFifo>(ebpf)?,
        messages: per_cpu_hash::<maps::Messages>(ebpf)?,
        invalid: per_cpu_array::<maps::Invalid>(ebpf)?,
        indices: hash::<maps::Indices>(ebpf)?,
        listen_port: array::<maps::ListenPort>(ebpf)?,
        rx_sessions: array::<maps::RxSessions>(ebpf)?,
        slot_keys: hash::<maps::SlotKeys>(ebpf)?,
    })
}

// Each map opened as the type its definition gives it: a map whose layout changed on one
// side only does not compile.

fn take<M: MapDef>(ebpf: &mut Ebpf) -> Result<Map> {
    ebpf.take_map(M::NAME).ok_or_else(|| anyhow!("map {} missing from the object", M::NAME))
}

fn hash<M: MapDef>(ebpf: &mut Ebpf) -> Result<BpfHashMap<MapData, M::Key, M::Value>>
where
    M::Key: Pod,
    M::Value: Pod,
{
    BpfHashMap::try_from(take::<M>(ebpf)?).with_context(|| format!("map {}", M::NAME))
}

fn per_cpu_hash<M: MapDef>(ebpf: &mut Ebpf) -> Result<PerCpuHashMap<MapData, M::Key, M::Value>>
where
    M::Key: Pod,
    M::Value: Pod,
{
    PerCpuHashMap::try_from(take::<M>(ebpf)?).with_context(|| format!("map {}", M::NAME))
}

fn lpm<M: MapDef>(ebpf: &mut Ebpf) -> Result<LpmTrie<MapData, M::Key, M::Value>>
where
    M::Key: Pod,
    M::Value: Pod,
{
    LpmTrie::try_from(take::<M>(ebpf)?).with_context(|| format!("map {}", M::NAME))
}

fn array<M: MapDef<Key = u32>>(ebpf: &mut Ebpf) -> Result<Array<MapData, M::Value>>
where
    M::Value: Pod,
{
    Array::try_from(take::<M>(ebpf)?).with_context(|| format!("map {}", M::NAME))
}

fn per_cpu_array<M: MapDef<Key = u32>>(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, M::Value>>
where
    M::Value: Pod,
{
    PerCpuArray::try_from(take::<M>(ebpf)?).with_context(|| format!("map {}", M::NAME))
}

/// An mmapable array of `len` entries, shared with the programs (see mapped.rs).
fn mapped<M: MapDef<Key = u32>>(ebpf: &mut Ebpf, len: u32) -> Result<MappedArray<M::Value>>
where
    M::Value: Copy,
{
    MappedArray::of(take::<M>(ebpf)?, M::NAME, len)
}

/// Places of the endpoint table: a power of two, at least one per peer.
fn endpoint_places(opts: &ProbeOptions) -> u32 {
    opts.max_peers.max(1).next_power_of_two()
}

/// The maps whose size the options set, and that size.
fn map_sizes(opts: &ProbeOptions) -> Vec<(&'static str, u32)> {
    vec![
        (names::DELAY_FIFO, opts.max_peers.saturating_mul(2)),
        (names::MESSAGES, opts.max_peers.saturating_add(1)),
        (names::INDICES, opts.max_peers.saturating_mul(4)),
        (names::PENDING, opts.max_pending),
        (names::LATENCY_HIST, opts.max_hist_entries),
        (names::PEER_COUNTERS, opts.max_peers),
        (names::RX_SESSIONS, opts.max_peers),
        (names::SLOT_KEYS, opts.max_peers),
        (names::ENDPOINTS, opts.max_peers),
        (names::ENDPOINT_PLACES, endpoint_places(opts)),
        (names::HOSTS_V4, opts.max_allowed_ips),
        (names::HOSTS_V6, opts.max_allowed_ips),
        (names::PEERS_V4, opts.max_allowed_ips),
        (names::PEERS_V6, opts.max_allowed_ips),
    ]
}
