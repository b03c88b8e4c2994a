//! What one refresh saw: the one contract between reading and serving. The page, the state
//! API and the tests read nothing else.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    bpf::Reading,
    history::Lifecycle,
    links::LinkState,
    pool::Pool,
    wireguard::{discovery::Found, Device, KeyMap},
};

/// Where an error or a duration comes from, as the `source` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorSource {
    Netlink,
    Uapi,
    Bpf,
    /// Entering another network namespace (`--netns`).
    Netns,
}

impl ErrorSource {
    pub const ALL: [ErrorSource; 4] = [Self::Netlink, Self::Uapi, Self::Bpf, Self::Netns];
    pub fn label(self) -> &'static str {
        match self {
            Self::Netlink => "netlink",
            Self::Uapi => "uapi",
            Self::Bpf => "bpf",
            Self::Netns => "netns",
        }
    }
}

/// What one refresh saw of one device.
#[derive(Clone)]
pub struct DeviceSnapshot {
    pub found: Found,
    /// WireGuard's own state, its counters made never-falling (shared with the refresh that
    /// keeps it as the last state known).
    pub state: Arc<Device>,
    /// What the programs counted and measured, counters made never-falling; None when they
    /// are not attached or could not be read.
    pub reading: Option<Reading>,
    /// Peers added and removed since start, endpoint changes per peer.
    pub lifecycle: Lifecycle,
    /// Peers whose last handshake is younger than 180 s.
    pub active: usize,
    /// Address pools of the interface's own subnets: IPv4, IPv6.
    pub pools: (Option<Pool>, Option<Pool>),
    /// Friendly names of the peers that have one.
    pub names: KeyMap<String>,
    /// When `state` was read, since the Unix epoch: this refresh's time, or earlier while
    /// WireGuard cannot be read and its last state stands in.
    pub read_at: Duration,
    /// Readings of WireGuard's state that failed, by kind, since the device was found.
    pub read_errors: Vec<(&'static str, u64)>,
}

/// The link of a device the collector follows or followed (a gone one stays, down).
#[derive(Clone, Debug)]
pub struct DeviceLink {
    /// Its namespace's `netns` label; None for the collector's own.
    pub netns: Option<String>,
    pub name: String,
    pub state: LinkState,
}

/// What one refresh saw.
#[derive(Clone)]
pub struct Snapshot {
    /// When the refresh began reading.
    pub began: Instant,
    /// The wall clock then, since the Unix epoch (handshake ages are measured against it).
    pub wall: Duration,
    pub devices: Vec<DeviceSnapshot>,
    /// Time spent per source in this refresh.
    pub durations: Vec<(ErrorSource, Duration)>,
    /// Errors per source since start.
    pub errors: Vec<(ErrorSource, u64)>,
    /// Netlink dumps interrupted by changes to their device, and read again, since start.
    pub dump_retries: u64,
    /// Link state of every device seen since start, gone ones included (down), in the
    /// namespaces followed now.
    pub links: Vec<DeviceLink>,
}
