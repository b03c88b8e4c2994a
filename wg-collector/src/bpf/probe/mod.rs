//! One WireGuard device's programs and maps, by concern: loading them (pinned or adopted)
//! and attaching them (`load.rs`, `attach.rs`), the write side that keeps the maps in line
//! with WireGuard's peers (`sync.rs`), and the read side, one typed reading (`read.rs`).

mod attach;
mod expiry;
mod load;
mod read;
mod state;
mod sync;

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap},
    programs::{SchedClassifier, TcAttachType},
    Ebpf,
};
use aya_log::EbpfLogger;
use ipnet::IpNet;
use wg_common::{
    latency::Endpoint,
    maps::{self, Key as MapKey, Value},
    names, DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_HIST_ENTRIES, DEFAULT_MAX_PEERS, DEFAULT_MAX_PENDING,
};

pub use attach::detach_clsact;
pub use read::{monotonic_ns, LatencyStats, ProgramStats, Reading};
pub use state::{Owner, ProgramState};

use super::{endpoint_places::EndpointPlaces, host_block::HostBlock, pending::PendingTable, PinDir, SlotTable};
use crate::wireguard::FastState;

/// Sizes of the maps and settings of the programs, set at load time.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    pub max_peers: u32,
    pub max_allowed_ips: u32,
    /// Packets that may wait for their answer at once (a power of two, as Config checks).
    pub max_pending: u32,
    /// Histogram entries (peer, kind, bucket).
    pub max_hist_entries: u32,
    /// One packet in `latency_sample` becomes a latency sample, round trip or encap/decap
    /// delay (a power of two, as Config checks; 1 = every one).
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

/// The maps, each typed by its definition in wg_common::maps.
struct Maps {
    hosts_v4: BpfHashMap<MapData, MapKey<maps::HostsV4>, Value<maps::HostsV4>>,
    hosts_v6: BpfHashMap<MapData, MapKey<maps::HostsV6>, Value<maps::HostsV6>>,
    /// The HOSTS_V4 entries of one /16 again, as an array (see host_block.rs).
    host_block: HostBlock,
    v4: LpmTrie<MapData, MapKey<maps::PeersV4>, Value<maps::PeersV4>>,
    v6: LpmTrie<MapData, MapKey<maps::PeersV6>, Value<maps::PeersV6>>,
    counters: PerCpuArray<MapData, Value<maps::PeerCounters>>,
    /// The same map, for batch reads (see batch.rs).
    counters_fd: std::os::fd::OwnedFd,
    unattributed: PerCpuArray<MapData, Value<maps::Unattributed>>,
    pending: PendingTable,
    hist: PerCpuHashMap<MapData, MapKey<maps::LatencyHist>, Value<maps::LatencyHist>>,
    latency_stats: PerCpuArray<MapData, Value<maps::LatencyStats>>,
    endpoints: BpfHashMap<MapData, MapKey<maps::Endpoints>, Value<maps::Endpoints>>,
    /// The same endpoints placed by hash, asked first by the programs (see endpoint_places.rs).
    endpoint_places: EndpointPlaces,
    fifos: Array<MapData, Value<maps::DelayFifo>>,
    messages: PerCpuHashMap<MapData, MapKey<maps::Messages>, Value<maps::Messages>>,
    invalid: PerCpuArray<MapData, Value<maps::Invalid>>,
    indices: BpfHashMap<MapData, MapKey<maps::Indices>, Value<maps::Indices>>,
    listen_port: Array<MapData, Value<maps::ListenPort>>,
    /// Slot → the peer's receive session (its window of message counters).
    rx_sessions: Array<MapData, Value<maps::RxSessions>>,
    /// Slot → public key, so a later collector knows the slots (see pins.rs).
    slot_keys: BpfHashMap<MapData, MapKey<maps::SlotKeys>, Value<maps::SlotKeys>>,
}

/// What the maps hold now, as the write side last left them.
struct Synced {
    slots: SlotTable,
    /// What the tries and host hashes hold: prefix → slot.
    prefixes: HashMap<IpNet, u32, FastState>,
    /// What ENDPOINTS holds.
    endpoints: HashMap<Endpoint, u32, FastState>,
    /// Whether a sync has placed the host block yet.
    block_followed: bool,
    /// Whether a sync has placed the endpoints yet.
    endpoints_placed: bool,
    /// Peer → the handshake (Unix time) whose expired session was settled (see expiry.rs).
    settled: HashMap<crate::wireguard::Key, std::time::Duration, FastState>,
}

/// The programs of one device and the maps that attribute its packets to peers.
pub struct DeviceProbe {
    // Owns the programs and, once attached, their links: dropping it detaches them.
    ebpf: Ebpf,
    /// Forwards the programs' log records to the `log` crate (and so to our tracing).
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    maps: Maps,
    synced: Synced,
    pins: Option<PinDir>,
    /// Underlay interfaces the underlay programs are attached to.
    underlays: HashSet<String>,
    /// Pending entries removed by the collector since load.
    expired: u64,
    cpus: usize,
}

/// The programs on the WireGuard interface (plaintext).
const PROGRAMS: [(&str, TcAttachType); 2] =
    [(names::PROG_INGRESS, TcAttachType::Ingress), (names::PROG_EGRESS, TcAttachType::Egress)];
/// The programs on the underlay (WireGuard's UDP datagrams).
const UNDERLAY_PROGRAMS: [(&str, TcAttachType); 2] =
    [(names::PROG_UNDER_INGRESS, TcAttachType::Ingress), (names::PROG_UNDER_EGRESS, TcAttachType::Egress)];

impl DeviceProbe {
    /// The /16 whose host addresses the host block holds, if any (see host_block.rs).
    pub fn host_block(&self) -> Option<std::net::Ipv4Addr> {
        self.maps.host_block.held()
    }

    /// How many endpoints have their place in the endpoint table (the others are found
    /// through the hash; see endpoint_places.rs).
    pub fn placed_endpoints(&self) -> usize {
        self.maps.endpoint_places.placed()
    }

    /// Where this device's maps and links are pinned, if they are.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pins.as_ref()
    }

    /// Peers with a slot.
    pub fn peers(&self) -> usize {
        self.synced.slots.len()
    }

    /// A program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        program(&mut self.ebpf, name)
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}
