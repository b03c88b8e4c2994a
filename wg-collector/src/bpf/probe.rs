//! One WireGuard device's programs and maps.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    os::fd::AsFd,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{
        lpm_trie::Key as LpmKey, Array, HashMap as BpfHashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        SchedClassifier, TcAttachType,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use ipnet::IpNet;
use wg_common::{
    latency::{fifo_key, stats, Endpoint, Fifo, HistKey, HistValue},
    names,
    protocol::{Invalid, MessageCounts, MessageType, NO_SLOT},
    Counter, PeerCounters, Unattributed, DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_HIST_ENTRIES, DEFAULT_MAX_PEERS,
    DEFAULT_MAX_PENDING, DIRECTIONS,
};

use super::{
    endpoint_places::EndpointPlaces, host_block::HostBlock, mapped::MappedArray, object, pending::PendingTable, PinDir,
    SlotTable,
};
use crate::wireguard::{FastState, Key, KeyMap, Peer};

/// Sizes of the maps, set at load time.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    pub max_peers: u32,
    pub max_allowed_ips: u32,
    /// Packets that may wait for their answer at once (a power of two, as Config checks).
    pub max_pending: u32,
    /// Histogram entries (peer, kind, bucket).
    pub max_hist_entries: u32,
    /// Record one in `latency_sample` matchable packets (a power of two, as Config checks; 1 =
    /// every one).
    pub latency_sample: u32,
    /// Track encap/decap delay (reads the clock for every packet).
    pub delay: bool,
    /// The most verbose level the programs' log statements (aya-log) emit at.
    pub log_level: log::LevelFilter,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            max_peers: DEFAULT_MAX_PEERS,
            max_allowed_ips: DEFAULT_MAX_ALLOWED_IPS,
            max_pending: DEFAULT_MAX_PENDING,
            max_hist_entries: DEFAULT_MAX_HIST_ENTRIES,
            latency_sample: 1,
            delay: true,
            log_level: log::max_level(),
        }
    }
}

/// The kernel's accounting of one program (bpf stats): cumulative run time and runs.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_time: Duration,
    pub runs: u64,
}

/// The programs of one device and the maps that attribute its packets to peers.
pub struct DeviceProbe {
    // Owns the programs and, once attached, their links: dropping it detaches them.
    ebpf: Ebpf,
    /// Forwards the programs' log records to the `log` crate (and so to our tracing).
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    hosts_v4: BpfHashMap<MapData, [u8; 4], u32>,
    /// The HOSTS_V4 entries of one /16 again, as an array (see host_block.rs).
    host_block: HostBlock,
    /// Whether a sync has placed the block yet.
    block_followed: bool,
    /// Whether a sync has placed the endpoints yet.
    endpoints_placed: bool,
    hosts_v6: BpfHashMap<MapData, [u8; 16], u32>,
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    counters: PerCpuArray<MapData, PeerCounters>,
    /// The same map, for batch reads (see batch.rs).
    counters_fd: std::os::fd::OwnedFd,
    unattributed: PerCpuArray<MapData, Counter>,
    pending: PendingTable,
    hist: PerCpuHashMap<MapData, HistKey, HistValue>,
    latency_stats: PerCpuArray<MapData, u64>,
    endpoints: BpfHashMap<MapData, Endpoint, u32>,
    /// The same endpoints placed by hash, asked first by the programs (see endpoint_places.rs).
    endpoint_places: EndpointPlaces,
    fifos: BpfHashMap<MapData, u32, Fifo>,
    messages: PerCpuHashMap<MapData, u32, MessageCounts>,
    invalid: PerCpuArray<MapData, u64>,
    indices: BpfHashMap<MapData, u32, u32>,
    listen_port: Array<MapData, u32>,
    /// Slot → public key, so a later collector knows the slots (see pins.rs).
    slot_keys: BpfHashMap<MapData, u32, [u8; 32]>,
    pins: Option<PinDir>,
    /// What ENDPOINTS holds now.
    synced_endpoints: HashMap<Endpoint, u32, FastState>,
    /// Underlay interfaces the underlay programs are attached to.
    underlays: HashSet<String>,
    /// Pending entries removed by [`expire_pending`](Self::expire_pending) since load.
    expired: u64,
    slots: SlotTable,
    /// What the tries hold now: prefix → slot.
    prefixes: HashMap<IpNet, u32, FastState>,
    cpus: usize,
}

/// The programs on the WireGuard interface (plaintext).
const PROGRAMS: [(&str, TcAttachType); 2] =
    [(names::PROG_INGRESS, TcAttachType::Ingress), (names::PROG_EGRESS, TcAttachType::Egress)];
/// The programs on the underlay (WireGuard's UDP datagrams).
const UNDERLAY_PROGRAMS: [(&str, TcAttachType); 2] =
    [(names::PROG_UNDER_INGRESS, TcAttachType::Ingress), (names::PROG_UNDER_EGRESS, TcAttachType::Egress)];

impl DeviceProbe {
    /// Loads the programs into the kernel (verified, not attached yet).
    /// With `pins`, the maps are pinned there, or adopted from there when an earlier
    /// collector left them (see pins.rs).
    pub fn load(opts: ProbeOptions, pins: Option<PinDir>) -> Result<Self> {
        // Disabled levels cost the programs one compare; aya_log_common::Level counts
        // Error = 1 up to Trace = 5, as log::LevelFilter does.
        let level = opts.log_level as u8;
        let sample_mask = opts.latency_sample - 1;
        let pending_mask = opts.max_pending - 1;
        let endpoint_places = endpoint_places(&opts);
        let endpoint_mask = endpoint_places - 1;
        let delay_enabled = opts.delay as u32;
        let sizes = map_sizes(&opts);
        let adopt = match &pins {
            Some(dir) => dir.prepare(&sizes)?,
            None => false,
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global(aya_log::LEVEL, &level, true)
            .override_global("LATENCY_SAMPLE_MASK", &sample_mask, true)
            .override_global("PENDING_MASK", &pending_mask, true)
            .override_global("ENDPOINT_PLACES_MASK", &endpoint_mask, true)
            .override_global("DELAY_ENABLED", &delay_enabled, true);
        for (name, entries) in &sizes {
            loader.map_max_entries(name, *entries);
        }
        if let Some(dir) = &pins {
            for name in names::PINNED {
                loader.map_pin_path(name, dir.map(name));
            }
        }
        let mut ebpf = loader.load(object()).context("loading the eBPF programs")?;
        for (name, _) in PROGRAMS.iter().chain(&UNDERLAY_PROGRAMS) {
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
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the object"));
        let hosts_v4 = BpfHashMap::try_from(take(names::HOSTS_V4)?)?;
        let hosts_v6 = BpfHashMap::try_from(take(names::HOSTS_V6)?)?;
        let host_block = HostBlock::new(
            Array::try_from(take(names::HOST_BLOCK_V4)?)?,
            Array::try_from(take(names::HOST_BLOCK_AT)?)?,
        )?;
        let v4 = LpmTrie::try_from(take(names::PEERS_V4)?)?;
        let v6 = LpmTrie::try_from(take(names::PEERS_V6)?)?;
        let counters = take(names::PEER_COUNTERS)?;
        let counters_fd = match &counters {
            Map::PerCpuArray(m) => m.fd().as_fd().try_clone_to_owned().context("duplicating the counters' fd")?,
            _ => anyhow::bail!("map {} is not a per-CPU array", names::PEER_COUNTERS),
        };
        let counters = PerCpuArray::try_from(counters)?;
        let unattributed = PerCpuArray::try_from(take(names::UNATTRIBUTED)?)?;
        let pending = PendingTable::new(MappedArray::of(take(names::PENDING)?, names::PENDING, opts.max_pending)?);
        let hist = PerCpuHashMap::try_from(take(names::LATENCY_HIST)?)?;
        let latency_stats = PerCpuArray::try_from(take(names::LATENCY_STATS)?)?;
        let endpoints = BpfHashMap::try_from(take(names::ENDPOINTS)?)?;
        let endpoint_places = EndpointPlaces::new(
            MappedArray::of(take(names::ENDPOINT_PLACES)?, names::ENDPOINT_PLACES, endpoint_places)?,
            adopt,
        );
        let fifos = BpfHashMap::try_from(take(names::DELAY_FIFO)?)?;
        let messages = PerCpuHashMap::try_from(take(names::MESSAGES)?)?;
        let invalid = PerCpuArray::try_from(take(names::INVALID)?)?;
        let indices = BpfHashMap::try_from(take(names::INDICES)?)?;
        let listen_port = Array::try_from(take(names::LISTEN_PORT)?)?;
        let slot_keys = BpfHashMap::try_from(take(names::SLOT_KEYS)?)?;
        let mut meta = Array::try_from(take(names::META)?)?;
        let cpus = nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let mut probe = Self {
            ebpf,
            logger,
            hosts_v4,
            host_block,
            block_followed: false,
            endpoints_placed: false,
            hosts_v6,
            v4,
            v6,
            counters,
            counters_fd,
            unattributed,
            pending,
            hist,
            latency_stats,
            endpoints,
            endpoint_places,
            fifos,
            messages,
            invalid,
            indices,
            listen_port,
            synced_endpoints: HashMap::default(),
            underlays: HashSet::new(),
            expired: 0,
            slots: SlotTable::new(opts.max_peers),
            prefixes: HashMap::default(),
            cpus,
            slot_keys,
            pins,
        };
        match probe.pins.clone() {
            Some(dir) if adopt => {
                probe.restore().with_context(|| format!("adopting the maps pinned in {}", dir.path().display()))?;
                tracing::info!(pins = %dir.path().display(), peers = probe.slots.len(), "adopted pinned maps");
            }
            Some(dir) => dir.seal(&mut meta)?,
            None => {}
        }
        Ok(probe)
    }

    /// Reads back what an earlier collector put into the adopted maps: whose slot is which,
    /// which prefixes and endpoints the maps hold.
    fn restore(&mut self) -> Result<()> {
        let owners =
            self.slot_keys.iter().map(|r| r.map(|(slot, key)| (slot, Key(key)))).collect::<Result<Vec<_>, _>>()?;
        self.slots = SlotTable::restore(self.slots.capacity(), owners);
        // Host addresses from the hashes, shorter prefixes from the tries (see insert_prefix).
        let hosts = self.hosts_v4.iter().map(|r| r.map(|(a, s)| (IpAddr::from(a), 32, s)));
        let hosts = hosts.chain(self.hosts_v6.iter().map(|r| r.map(|(a, s)| (IpAddr::from(a), 128, s))));
        let tries = self.v4.iter().map(|r| r.map(|(k, s)| (IpAddr::from(k.data()), k.prefix_len() as u8, s)));
        let tries =
            tries.chain(self.v6.iter().map(|r| r.map(|(k, s)| (IpAddr::from(k.data()), k.prefix_len() as u8, s))));
        for item in hosts.chain(tries) {
            let (addr, len, slot) = item?;
            self.prefixes.insert(IpNet::new(addr, len)?, slot);
        }
        self.synced_endpoints = self.endpoints.iter().collect::<Result<_, _>>()?;
        Ok(())
    }

    /// The /16 whose host addresses the host block holds, if any (see host_block.rs).
    pub fn host_block(&self) -> Option<std::net::Ipv4Addr> {
        self.host_block.held()
    }

    /// How many endpoints have their place in the endpoint table (the others are found
    /// through the hash; see endpoint_places.rs).
    pub fn placed_endpoints(&self) -> usize {
        self.endpoint_places.placed()
    }

    /// Where this device's maps and links are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// Attaches both programs to `iface` (TCX on kernels ≥ 6.6, clsact before). They run
    /// after programs already there and pass every packet on.
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        // Needed only for the netlink (pre-TCX) path; harmless if it exists.
        let _ = tc::qdisc_add_clsact(iface);
        for (name, attach_type) in PROGRAMS {
            self.attach_one(name, iface, attach_type).with_context(|| format!("attaching {name} to {iface}"))?;
        }
        Ok(())
    }

    /// Attaches one program. With pins and TCX, the link is pinned, so the program stays
    /// attached when the collector exits; a link an earlier collector pinned gets this
    /// program atomically in place of its own (no packet is counted twice or missed).
    /// Netlink (clsact) attachments cannot be pinned: they end with the collector.
    fn attach_one(&mut self, name: &str, iface: &str, attach_type: TcAttachType) -> Result<()> {
        let pin = self.pins.as_ref().map(|d| d.link(name, iface));
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let mut replaced = None;
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            let old = PinnedLink::from_pin(path).map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
            // The old link's interface may be gone (a device deleted and created again): its
            // link cannot take a program any more, so it is unpinned and a new one made.
            let link =
                SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            match prog.attach_to_link(link) {
                Ok(id) => replaced = Some(id),
                Err(e) => {
                    tracing::debug!(link = %path.display(), "pinned link not reusable ({e}); attaching anew");
                    std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
                }
            }
        }
        let was_pinned = replaced.is_some();
        let id = match replaced {
            Some(id) => id,
            None => prog.attach(iface, attach_type)?,
        };
        let Some(path) = pin else { return Ok(()) };
        if was_pinned {
            // Still pinned at its path; only our fd to it is dropped with the program.
            return Ok(());
        }
        let link = prog.take_link(id)?;
        match FdLink::try_from(link) {
            Ok(fd) => {
                fd.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            }
            // A netlink attachment: give it back to the program, which detaches it on drop.
            Err(_) => tracing::debug!(program = name, "attached through netlink; not pinned"),
        }
        Ok(())
    }

    /// Attaches the underlay programs to `iface`, once.
    pub fn attach_underlay(&mut self, iface: &str) -> Result<()> {
        if self.underlays.contains(iface) {
            return Ok(());
        }
        let _ = tc::qdisc_add_clsact(iface);
        for (name, attach_type) in UNDERLAY_PROGRAMS {
            self.attach_one(name, iface, attach_type)
                .with_context(|| format!("attaching {name} to underlay {iface}"))?;
        }
        self.underlays.insert(iface.to_string());
        Ok(())
    }

    pub fn underlays(&self) -> &HashSet<String> {
        &self.underlays
    }

    /// Tells the underlay programs which UDP port is this device's.
    pub fn set_listen_port(&mut self, port: u16) -> Result<()> {
        if self.listen_port.get(&0, 0)? != port as u32 {
            self.listen_port.set(0, port as u32, 0)?;
        }
        Ok(())
    }

    /// A program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        program(&mut self.ebpf, name)
    }

    /// Makes the maps say what `peers` say: every peer has a slot, every allowed IP points
    /// at its peer's slot, nothing else is in the tries. A peer seen for the first time
    /// starts from zero; a removed peer's slot is freed.
    pub fn sync(&mut self, peers: &[Peer]) -> Result<()> {
        let mut wanted: HashMap<IpNet, u32, FastState> =
            HashMap::with_capacity_and_hasher(peers.len(), FastState::default());
        for p in peers {
            let (slot, fresh) = self.slots.assign(p.public_key)?;
            if fresh {
                let zero = PerCpuValues::try_from(vec![PeerCounters::default(); self.cpus])?;
                self.counters.set(slot, zero, 0).context("zeroing a peer slot")?;
                self.slot_keys.insert(slot, p.public_key.0, 0).context("recording a slot's peer")?;
            }
            for net in &p.allowed_ips {
                wanted.insert(*net, slot);
            }
        }
        // The first sync looks at the block even when adopted maps already hold every prefix.
        let mut changed = !self.block_followed;
        self.block_followed = true;
        for (net, slot) in &wanted {
            if self.prefixes.get(net) != Some(slot) {
                self.insert_prefix(net, *slot).with_context(|| format!("adding allowed IP {net}"))?;
                self.prefixes.insert(*net, *slot);
                changed = true;
            }
        }
        let stale: Vec<IpNet> = self.prefixes.keys().filter(|n| !wanted.contains_key(n)).copied().collect();
        for net in stale {
            self.remove_prefix(&net).with_context(|| format!("removing allowed IP {net}"))?;
            self.prefixes.remove(&net);
            changed = true;
        }
        if changed {
            let hosts = self.prefixes.iter().filter_map(|(net, slot)| match net {
                IpNet::V4(n) if n.prefix_len() == 32 => Some((n.addr(), *slot)),
                _ => None,
            });
            self.host_block.follow(hosts)?;
        }
        let mut wanted_endpoints: HashMap<Endpoint, u32, FastState> =
            HashMap::with_capacity_and_hasher(peers.len(), FastState::default());
        for p in peers {
            if let (Some(e), Some(slot)) = (p.endpoint, self.slots.get(&p.public_key)) {
                wanted_endpoints.insert(endpoint_key(e), slot);
            }
        }
        let mut endpoints_changed = !self.endpoints_placed;
        for (e, slot) in &wanted_endpoints {
            if self.synced_endpoints.get(e) != Some(slot) {
                self.endpoints.insert(e, slot, 0).context("adding an endpoint")?;
                self.synced_endpoints.insert(*e, *slot);
                endpoints_changed = true;
            }
        }
        let stale: Vec<Endpoint> =
            self.synced_endpoints.keys().filter(|e| !wanted_endpoints.contains_key(e)).copied().collect();
        for e in stale {
            let _ = self.endpoints.remove(&e);
            self.synced_endpoints.remove(&e);
            endpoints_changed = true;
        }
        if endpoints_changed {
            self.endpoint_places.follow(&self.synced_endpoints);
            self.endpoints_placed = true;
        }

        let wanted_keys: HashSet<&Key, FastState> = peers.iter().map(|p| &p.public_key).collect();
        let gone: Vec<Key> = self.slots.keys().filter(|k| !wanted_keys.contains(k)).copied().collect();
        let mut freed = HashSet::new();
        for k in gone {
            freed.extend(self.slots.release(&k));
        }
        for slot in &freed {
            let _ = self.slot_keys.remove(slot);
            // Nor the packets its last peer left inside WireGuard, nor its message counts.
            let _ = self.fifos.remove(&fifo_key(*slot, false));
            let _ = self.fifos.remove(&fifo_key(*slot, true));
            let _ = self.messages.remove(slot);
        }
        if !freed.is_empty() {
            // Nor the handshake indices its last peer was given.
            let stale: Vec<u32> =
                self.indices.iter().filter_map(|r| r.ok()).filter(|(_, s)| freed.contains(s)).map(|(i, _)| i).collect();
            for i in stale {
                let _ = self.indices.remove(&i);
            }
        }
        if !freed.is_empty() {
            // A slot's next peer must not inherit its latency samples.
            let stale: Vec<HistKey> =
                self.hist.keys().filter_map(|k| k.ok()).filter(|k| freed.contains(&k.slot)).collect();
            for k in stale {
                let _ = self.hist.remove(&k);
            }
        }
        Ok(())
    }

    /// Every latency histogram entry with samples, summed over CPUs: (peer, kind, bucket,
    /// samples); the peer is `None` for samples of the device whose peer was not known (an
    /// endpoint not synced yet). Peers without samples have no entries.
    pub fn histograms(&self) -> Result<Vec<(Option<Key>, HistKey, HistValue)>> {
        let by_slot = self.slots.by_slot();
        let mut out = Vec::new();
        for item in self.hist.iter() {
            let (k, per_cpu) = item?;
            let peer = by_slot.get(&k.slot).copied();
            if peer.is_none() && k.slot != NO_SLOT {
                continue; // a freed slot's leftovers, removed at the next sync
            }
            let mut v = HistValue::default();
            for c in per_cpu.iter() {
                v.count += c.count;
                v.sum_ns += c.sum_ns;
            }
            if v.count > 0 {
                out.push((peer, k, v));
            }
        }
        Ok(out)
    }

    /// Underlay messages per peer, summed over CPUs, and the device's own (peer unknown).
    /// `counters` ([`all_peer_counters`](Self::all_peer_counters), read once per reading for
    /// both) hold the peers' data messages.
    pub fn messages(&self, counters: &KeyMap<PeerCounters>) -> Result<(KeyMap<MessageCounts>, MessageCounts)> {
        let by_slot = self.slots.by_slot();
        let mut peers = KeyMap::default();
        let mut device = MessageCounts::default();
        for item in self.messages.iter() {
            let (slot, per_cpu) = item?;
            let mut sum = MessageCounts::default();
            for c in per_cpu.iter() {
                for (d, row) in c.counts.iter().enumerate() {
                    for (t, n) in row.iter().enumerate() {
                        sum.counts[d][t] += n;
                    }
                }
            }
            if slot == NO_SLOT {
                device = sum;
            } else if let Some(k) = by_slot.get(&slot) {
                peers.insert(*k, sum);
            }
        }
        let data = MessageType::Data as usize;
        for (k, c) in counters {
            if c.data_messages.iter().any(|n| *n > 0) {
                let m = peers.entry(*k).or_default();
                for d in 0..DIRECTIONS {
                    m.counts[d][data] += c.data_messages[d];
                }
            }
        }
        Ok((peers, device))
    }

    /// Datagrams to the device's port that were no valid message, by [`Invalid`] reason.
    pub fn invalid(&self) -> Result<[u64; Invalid::ALL.len()]> {
        let mut out = [0; Invalid::ALL.len()];
        for r in Invalid::ALL {
            out[r as usize] = self.invalid.get(&(r as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Frees the places of packets that waited longer than `ttl` for an answer
    /// (CLOCK_MONOTONIC, the programs' clock). Returns how many are still waiting.
    pub fn expire_pending(&mut self, ttl: Duration) -> Result<u64> {
        let found = self.pending.expire(monotonic_ns(), ttl.as_nanos() as u64);
        self.expired += found.expired;
        Ok(found.waiting)
    }

    /// The latency counters: (recorded, matched, displaced by a newer question, samples lost
    /// because the histogram map was full, expired by the collector).
    pub fn latency_stats(&self) -> Result<LatencyStats> {
        let sum = |i: u32| -> Result<u64> { Ok(self.latency_stats.get(&i, 0)?.iter().sum()) };
        Ok(LatencyStats {
            recorded: sum(stats::RECORDED)?,
            matched: sum(stats::MATCHED)?,
            displaced: sum(stats::DISPLACED)?,
            hist_full: sum(stats::HIST_FULL)?,
            fifo_resync: sum(stats::FIFO_RESYNC)?,
            fifo_overflow: sum(stats::FIFO_OVERFLOW)?,
            expired: self.expired,
            capacity: self.pending.places(),
        })
    }

    /// Host addresses go to the hash maps, shorter prefixes to the tries (see wg-ebpf).
    fn insert_prefix(&mut self, net: &IpNet, slot: u32) -> Result<()> {
        let host = net.prefix_len() == net.max_prefix_len();
        match net.addr() {
            IpAddr::V4(a) if host => {
                self.hosts_v4.insert(a.octets(), slot, 0)?;
                self.host_block.set(a, Some(slot))?;
            }
            IpAddr::V6(a) if host => self.hosts_v6.insert(a.octets(), slot, 0)?,
            IpAddr::V4(a) => self.v4.insert(&LpmKey::new(net.prefix_len().into(), a.octets()), slot, 0)?,
            IpAddr::V6(a) => self.v6.insert(&LpmKey::new(net.prefix_len().into(), a.octets()), slot, 0)?,
        }
        Ok(())
    }

    fn remove_prefix(&mut self, net: &IpNet) -> Result<()> {
        let host = net.prefix_len() == net.max_prefix_len();
        match net.addr() {
            IpAddr::V4(a) if host => {
                self.host_block.set(a, None)?;
                self.hosts_v4.remove(&a.octets())?;
            }
            IpAddr::V6(a) if host => self.hosts_v6.remove(&a.octets())?,
            IpAddr::V4(a) => self.v4.remove(&LpmKey::new(net.prefix_len().into(), a.octets()))?,
            IpAddr::V6(a) => self.v6.remove(&LpmKey::new(net.prefix_len().into(), a.octets()))?,
        }
        Ok(())
    }

    /// Every peer's counters summed over all CPUs, read in batches (one syscall per 4096
    /// slots) where the live peers fill most of the slots given out so far; one lookup per
    /// peer where they are sparse (after heavy churn the high-water mark can be far above the
    /// peers there are: the soak found batch reads of 65k mostly idle slots).
    pub fn all_peer_counters(&self) -> Result<KeyMap<PeerCounters>> {
        let by_slot = self.slots.by_slot();
        let one_by_one =
            || by_slot.values().filter_map(|k| self.peer_counters(k).transpose().map(|c| c.map(|c| (*k, c)))).collect();
        if (by_slot.len() as u64) * 2 < self.slots.high_water() as u64 {
            return one_by_one();
        }
        let sums = match super::batch::lookup_percpu_array::<PeerCounters, PeerCounters>(
            self.counters_fd.as_fd(),
            self.slots.high_water(),
            self.cpus,
            |per_cpu| sum_counters(per_cpu.iter()),
        ) {
            Ok(sums) => sums,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => return one_by_one(),
            Err(e) => return Err(anyhow!("reading {} in batches: {e}", names::PEER_COUNTERS)),
        };
        Ok(sums.into_iter().enumerate().filter_map(|(slot, c)| Some((*by_slot.get(&(slot as u32))?, c))).collect())
    }

    /// A peer's counters summed over all CPUs; `None` for a peer without a slot.
    pub fn peer_counters(&self, key: &Key) -> Result<Option<PeerCounters>> {
        let Some(slot) = self.slots.get(key) else { return Ok(None) };
        Ok(Some(sum_counters(self.counters.get(&slot, 0)?.iter())))
    }

    /// Packets no peer could be given, by direction and reason, summed over all CPUs.
    pub fn unattributed(&self) -> Result<[[Counter; Unattributed::ALL.len()]; DIRECTIONS]> {
        let mut out = [[Counter::default(); Unattributed::ALL.len()]; DIRECTIONS];
        for (d, row) in out.iter_mut().enumerate() {
            for reason in Unattributed::ALL {
                let cell = &mut row[reason as usize];
                for c in self.unattributed.get(&wg_common::unattributed_index(d, reason), 0)?.iter() {
                    cell.packets += c.packets;
                    cell.bytes += c.bytes;
                }
            }
        }
        Ok(out)
    }

    /// The kernel's run time and run count of each program (non-zero only while bpf stats
    /// are enabled).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        PROGRAMS
            .iter()
            .chain(&UNDERLAY_PROGRAMS)
            .filter_map(|(name, _)| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats { program: name, run_time: info.run_time(), runs: info.run_count() })
            })
            .collect()
    }

    /// Passes the programs' pending log records on.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Peers with a slot.
    pub fn peers(&self) -> usize {
        self.slots.len()
    }
}

fn sum_counters<'a>(per_cpu: impl Iterator<Item = &'a PeerCounters>) -> PeerCounters {
    let mut sum = PeerCounters::default();
    for c in per_cpu {
        for d in 0..DIRECTIONS {
            sum.dir[d].packets += c.dir[d].packets;
            sum.dir[d].bytes += c.dir[d].bytes;
            sum.data_messages[d] += c.data_messages[d];
        }
    }
    sum
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
        (names::SLOT_KEYS, opts.max_peers),
        (names::ENDPOINTS, opts.max_peers),
        (names::ENDPOINT_PLACES, endpoint_places(opts)),
        (names::HOSTS_V4, opts.max_allowed_ips),
        (names::HOSTS_V6, opts.max_allowed_ips),
        (names::PEERS_V4, opts.max_allowed_ips),
        (names::PEERS_V6, opts.max_allowed_ips),
    ]
}

/// What happened to packets waiting for their answer, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyStats {
    pub recorded: u64,
    pub matched: u64,
    pub displaced: u64,
    pub hist_full: u64,
    pub fifo_resync: u64,
    pub fifo_overflow: u64,
    pub expired: u64,
    pub capacity: u32,
}

/// An endpoint as the underlay programs key it: IPv4 mapped into IPv6.
fn endpoint_key(e: std::net::SocketAddr) -> Endpoint {
    let addr = match e.ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    Endpoint { addr, port: e.port(), _pad: 0 }
}

/// CLOCK_MONOTONIC in nanoseconds: what bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}
