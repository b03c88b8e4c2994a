//! A reading built in memory, for unit tests of everything downstream of the refresh (the
//! page, the state API): two devices, peers with and without measurements, every kind of
//! family filled in, with values that tell the families apart.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use wg_common::{
    buckets::bucket_of,
    latency::{HistKey, HistValue, Kind},
    path::PathCounts,
    protocol::{MessageCounts, NO_SLOT},
    Counter, PeerCounters, DIRECTIONS,
};

use crate::{
    bpf::{LatencyStats, ProgramStats, Reading},
    history::{ConfigField, Lifecycle},
    http::{
        conn::ConnCounts,
        requests::{EndpointCounts, Handler, RequestCounts},
    },
    links::LinkState,
    pool::Pool,
    refresh::{DeviceLink, DeviceSnapshot, ErrorSource, Snapshot},
    wireguard::{
        discovery::{Api, Found},
        Device, Implementation, Key, KeyMap, Peer,
    },
};

pub fn key(n: u8) -> Key {
    Key([n; 32])
}

fn peer(n: u8, endpoint: Option<&str>, allowed: &[&str], rx: u64, tx: u64, handshake: Option<u64>) -> Peer {
    let mut p = Peer::new(key(n));
    p.endpoint = endpoint.map(|e| e.parse().unwrap());
    p.allowed_ips = allowed.iter().map(|a| a.parse().unwrap()).collect();
    p.rx_bytes = rx;
    p.tx_bytes = tx;
    p.last_handshake = handshake.map(Duration::from_secs);
    p
}

fn counters(rx: (u64, u64), tx: (u64, u64), data: [u64; DIRECTIONS]) -> PeerCounters {
    PeerCounters {
        dir: [Counter { packets: rx.0, bytes: rx.1 }, Counter { packets: tx.0, bytes: tx.1 }],
        data_messages: data,
        path: PathCounts { lost: data[0] + 1, reordered: data[0] + 2, duplicate: data[0] + 3, unchecked: 1 },
    }
}

fn messages(base: u64) -> MessageCounts {
    let mut m = MessageCounts::default();
    for (d, row) in m.counts.iter_mut().enumerate() {
        for (t, n) in row.iter_mut().enumerate() {
            *n = base + (d * 10 + t) as u64;
        }
    }
    m
}

/// Latency samples of one kind: (peer, key, value) per sample value in nanoseconds.
fn samples(peer: Option<Key>, kind: Kind, ns: &[u64]) -> Vec<(Option<Key>, HistKey, HistValue)> {
    let slot = if peer.is_some() { 0 } else { NO_SLOT };
    ns.iter()
        .map(|n| (peer, HistKey { slot, kind: kind as u16, bucket: bucket_of(*n) }, HistValue { count: 1, sum_ns: *n }))
        .collect()
}

/// A device read over the UAPI with the programs attached and measuring.
fn measured() -> DeviceSnapshot {
    let state = Device {
        name: "wg0".into(),
        public_key: Some(key(200)),
        listen_port: 51820,
        fwmark: 0x51,
        peers: vec![
            peer(1, Some("192.0.2.1:51820"), &["10.99.0.2/32", "fd00::2/128"], 1_000, 2_000, Some(1_700_000_000)),
            peer(2, Some("[2001:db8::7]:4500"), &["10.99.1.0/24"], 5, 6, None),
            peer(3, None, &[], 0, 0, None),
        ],
    };
    let mut c = KeyMap::default();
    c.insert(key(1), counters((10, 1_400), (12, 1_600), [9, 11]));
    c.insert(key(2), counters((0, 0), (3, 252), [0, 3]));
    let mut m = KeyMap::default();
    m.insert(key(1), messages(100));
    let mut latency = samples(Some(key(1)), Kind::TcpTs, &[300_000, 450_000, 2_000_000]);
    latency.extend(samples(Some(key(1)), Kind::HandshakeInitiator, &[800_000]));
    latency.extend(samples(Some(key(2)), Kind::Icmp, &[40_000_000]));
    latency.extend(samples(Some(key(1)), Kind::Encap, &[20_000, 30_000]));
    latency.extend(samples(None, Kind::HandshakeResponder, &[1_200_000]));
    let mut endpoint_changes = KeyMap::default();
    endpoint_changes.insert(key(1), 2);
    endpoint_changes.insert(key(2), 0);
    endpoint_changes.insert(key(3), 0);
    let mut names = KeyMap::default();
    names.insert(key(1), "laptop \"alice\"".to_string());
    DeviceSnapshot {
        found: Found {
            name: "wg0".into(),
            ifindex: 7,
            implementation: Implementation::WireguardGo,
            api: Api::Uapi(PathBuf::from("/var/run/wireguard/wg0.sock")),
            netns: None,
        },
        state: state.into(),
        reading: Some(Reading {
            counters: c,
            unattributed: [
                [Counter { packets: 4, bytes: 400 }, Counter { packets: 1, bytes: 1 }, Counter::default()],
                [Counter { packets: 2, bytes: 96 }, Counter::default(), Counter { packets: 1, bytes: 3 }],
            ],
            program_stats: vec![
                ProgramStats { program: "wg_plain_ingress", run_time: Duration::from_micros(1_500), runs: 30 },
                ProgramStats { program: "wg_plain_egress", run_time: Duration::from_micros(2_500), runs: 40 },
            ],
            latency,
            latency_stats: LatencyStats {
                recorded: 20,
                matched: 4,
                displaced: 3,
                hist_full: 1,
                fifo_resync: 2,
                fifo_overflow: 5,
                expired: 6,
                capacity: 65_536,
            },
            pending: 7,
            messages: m,
            device_messages: messages(500),
            invalid: [1, 2, 3, 4],
        }),
        lifecycle: Lifecycle {
            added: 3,
            removed: 1,
            endpoint_changes,
            config_changes: ConfigField::ALL.iter().enumerate().map(|(i, f)| (*f, i as u64)).collect(),
            changed: Vec::new(),
        },
        active: 1,
        pools: (
            Some(Pool { size: 256.0, free: 253.0 }),
            Some(Pool { size: 18446744073709552000.0, free: 18446744073709552000.0 }),
        ),
        names,
        read_at: Duration::from_secs(1_700_000_200),
        read_errors: Vec::new(),
    }
}

/// A kernel device whose programs could not be attached: WireGuard's own state only.
fn unmeasured() -> DeviceSnapshot {
    DeviceSnapshot {
        found: Found {
            name: "wg1".into(),
            ifindex: 9,
            implementation: Implementation::Kernel,
            api: Api::Netlink,
            netns: None,
        },
        state: Arc::new(Device {
            name: "wg1".into(),
            public_key: None,
            listen_port: 0,
            fwmark: 0,
            peers: vec![peer(4, Some("198.51.100.4:1"), &["0.0.0.0/0", "::/0"], 77, 88, Some(1_700_000_100))],
        }),
        reading: None,
        lifecycle: Lifecycle {
            config_changes: ConfigField::ALL.iter().map(|f| (*f, 0)).collect(),
            ..Default::default()
        },
        active: 0,
        pools: (None, None),
        names: KeyMap::default(),
        // WireGuard did not answer for the last 30 s: its last state stands in.
        read_at: Duration::from_secs(1_700_000_170),
        read_errors: vec![("timeout", 2)],
    }
}

/// The metrics endpoint's connection counts.
pub fn conns() -> EndpointCounts {
    let mut durations = BTreeMap::new();
    let mut metrics = crate::histogram::Series::default();
    metrics.add(wg_common::buckets::bucket_of(3_000_000), 9, 27_000_000);
    durations.insert(Handler::Metrics, metrics);
    EndpointCounts {
        conns: ConnCounts { open: 3, refused: [4, 844], ended: [256, 1, 2, 5], accept_errors: 0 },
        requests: RequestCounts {
            answered: [((Handler::Metrics, 200), 9), ((Handler::Metrics, 401), 2), ((Handler::Healthy, 200), 1)].into(),
            durations,
            refused: [2, 1, 0, 0, 0],
        },
    }
}

/// The whole reading; `began` is now (the page's reading age is then near 0).
pub fn snapshot() -> Arc<Snapshot> {
    Arc::new(Snapshot {
        began: Instant::now(),
        // Peer 1's handshake (1_700_000_000) is 200 s old then, peer 4's (…100) 100 s: one
        // down, one up.
        wall: Duration::from_secs(1_700_000_200),
        devices: vec![measured(), unmeasured()],
        durations: vec![
            (ErrorSource::Uapi, Duration::from_micros(2_100)),
            (ErrorSource::Bpf, Duration::from_micros(900)),
        ],
        errors: vec![(ErrorSource::Netlink, 0), (ErrorSource::Uapi, 2), (ErrorSource::Bpf, 5)],
        dump_retries: 3,
        links: vec![
            link("wg0", LinkState { up: true, ifindex: Some(7), flaps: 1 }),
            link("wg1", LinkState { up: true, ifindex: Some(9), flaps: 0 }),
            link("wg9", LinkState { up: false, ifindex: None, flaps: 3 }),
        ],
    })
}

fn link(name: &str, state: LinkState) -> DeviceLink {
    DeviceLink { netns: None, name: name.into(), state }
}
