//! The command line as clap reads it. Every flag is declared here, once; [`super::Config`]
//! checks them and turns them into what the parts of the collector take.

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser};
use wg_common::{DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_HIST_ENTRIES, DEFAULT_MAX_PEERS, DEFAULT_MAX_PENDING};

use crate::{
    histogram::{Buckets, Schema},
    http::{
        conn::{parse_duration, DEFAULT_CAPS},
        listen::ListenAddress,
    },
    metrics::DEFAULT_MAX_SERIES,
    wireguard::discovery::DEFAULT_UAPI_DIR,
};

/// WireGuard telemetry collector: per-peer packet counters measured by eBPF on the
/// WireGuard interface, merged with WireGuard's own state, served to Prometheus.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Address to serve metrics on. Default: [::]:9586 when authentication is configured,
    /// else 127.0.0.1:9586 (loopback only).
    /// INTERFACE:PORT (wg0:9586) listens on every address of that interface only, following
    /// them as they change: the metrics are then reachable over the VPN alone.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<ListenAddress>,
    /// TLS and basic auth settings, in the format of prometheus/exporter-toolkit
    /// (node_exporter's --web.config.file). Reloaded on SIGHUP and when it changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Bearer tokens, one per line (Prometheus: authorization.credentials_file). Reloaded on
    /// SIGHUP and when it changes.
    #[arg(long = "web.bearer-token-file", value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// Answer only clients from these networks or addresses (CIDR or address; repeat or
    /// separate with commas); others get 403 before any authentication. Default: every
    /// client (or http_server_config.allowed_clients in --web.config.file).
    #[arg(long = "web.allowed-clients", value_name = "CIDR", value_delimiter = ',', value_parser = crate::http::allow::parse_client)]
    pub allowed_clients: Vec<ipnet::IpNet>,
    /// Allow serving a non-loopback address without authentication.
    #[arg(long = "web.insecure")]
    pub insecure: bool,
    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", default_value = "/metrics")]
    pub telemetry_path: String,
    /// Time a client has to send a request's headers (from connecting, or from the first
    /// byte of a later request), and to finish a TLS handshake [default: 10s; or
    /// http_server_config.read_header_timeout in --web.config.file].
    #[arg(long = "web.read-header-timeout", value_name = "DURATION", value_parser = parse_duration)]
    pub read_header_timeout: Option<Duration>,
    /// Time a kept-alive connection may wait for its next request [default: 2m; or
    /// http_server_config.idle_timeout].
    #[arg(long = "web.idle-timeout", value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Time a write of the answer may make no progress (a client that stopped reading)
    /// [default: 1m; or http_server_config.write_timeout].
    #[arg(long = "web.write-timeout", value_name = "DURATION", value_parser = parse_duration)]
    pub write_timeout: Option<Duration>,
    /// Connections open at once, from all clients; more are closed at once (lowered at start
    /// to what the open-files limit leaves).
    #[arg(long = "web.max-connections", default_value_t = DEFAULT_CAPS.total)]
    pub max_connections: usize,
    /// Connections open at once from one client address; more are closed at once.
    #[arg(long = "web.max-connections-per-client", default_value_t = DEFAULT_CAPS.per_client)]
    pub max_connections_per_client: usize,
    /// Only watch this device (repeat for several; default: every WireGuard device).
    #[arg(long = "device", value_name = "NAME")]
    pub devices: Vec<String>,
    /// Also read WireGuard devices in this network namespace: a name under /run/netns, a
    /// namespace file (/proc/PID/ns/net, a bind mount), or "all" for every namespace there is,
    /// followed as they appear and go (repeat for several). Their series carry a `netns`
    /// label (the name; net:[INODE] for one known only through its processes); the
    /// collector's own namespace is always read, without that label. Keeps CAP_SYS_ADMIN
    /// (entering a namespace) and CAP_SYS_PTRACE (reading other processes' namespaces and
    /// container roots, where their UAPI sockets are).
    #[arg(long = "netns", value_name = "NAME|PATH|all")]
    pub netns: Vec<String>,
    /// Directory of the UAPI sockets of userspace WireGuard implementations.
    #[arg(long = "uapi-dir", default_value = DEFAULT_UAPI_DIR)]
    pub uapi_dir: PathBuf,
    /// How often devices and peers are re-read to keep the eBPF maps in sync, in seconds.
    #[arg(long = "poll-interval", default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Let a scrape show the last reading of WireGuard and the maps if it began at most this
    /// many seconds ago (the poll loop reads every --poll-interval); 0 = read at every scrape.
    /// For many peers on userspace WireGuard, whose state is slow to read (wireguard-go at 10k
    /// peers: ~80 ms a reading), and for several Prometheus servers scraping one gateway.
    #[arg(long = "scrape.max-age", default_value_t = 0.0)]
    pub scrape_max_age: f64,
    /// Peer slots per device in the eBPF maps.
    #[arg(long = "bpf.max-peers", default_value_t = DEFAULT_MAX_PEERS)]
    pub max_peers: u32,
    /// Allowed-IP prefixes per address family and device in the eBPF maps.
    #[arg(long = "bpf.max-allowed-ips", default_value_t = DEFAULT_MAX_ALLOWED_IPS)]
    pub max_allowed_ips: u32,
    /// Classic latency histogram boundaries (`le`) in seconds, comma-separated, or "full"
    /// for every kernel bucket (16 per power of two).
    #[arg(long = "latency.buckets", default_value_t = Buckets::default())]
    pub latency_buckets: Buckets,
    /// Native histogram schema of the protobuf page: 2^schema buckets per doubling, 0 to 4
    /// (the kernel bins at 4; a coarser schema merges its buckets exactly).
    #[arg(long = "latency.schema", default_value_t = Schema::default())]
    pub latency_schema: Schema,
    /// One packet in N becomes a latency sample (a power of two; 1 = every packet): round-trip
    /// questions picked by their sequence or timestamp, encap/decap delay at random. The others
    /// skip the clock and the histogram: what a busy gateway saves (README, "At line rate").
    #[arg(long = "latency.sample", default_value_t = 1)]
    pub latency_sample: u32,
    /// Seconds a packet may wait for its answer before it is forgotten.
    #[arg(long = "latency.pending-ttl", default_value_t = 5.0)]
    pub pending_ttl: f64,
    /// Places for packets waiting for their answer, per device (a power of two: a hash of
    /// the flow picks the place, and a newer packet takes an occupied one).
    #[arg(long = "latency.max-pending", default_value_t = DEFAULT_MAX_PENDING)]
    pub max_pending: u32,
    /// Latency histogram entries (peer, method, bucket) per device.
    #[arg(long = "latency.max-hist-entries", default_value_t = DEFAULT_MAX_HIST_ENTRIES)]
    pub max_hist_entries: u32,
    /// Do not measure encap/decap delay (it reads the clock for every packet).
    #[arg(long = "latency.no-delay")]
    pub no_delay: bool,
    /// A names file: "public-key name" per line (repeat for several).
    #[arg(long = "names.file", value_name = "FILE")]
    pub names_files: Vec<PathBuf>,
    /// A wg-quick configuration whose [Peer] sections carry "# friendly_name = ..." comments
    /// (repeat for several).
    #[arg(long = "names.wg-config", value_name = "FILE")]
    pub wg_configs: Vec<PathBuf>,
    /// Hide what maps your network: endpoints (the endpoint label), allowed-ips (the
    /// wireguard_peer_allowed_ips_info family), or all; repeatable.
    #[arg(long = "redact", value_name = "WHAT", value_parser = ["endpoints", "allowed-ips", "all"])]
    pub redact: Vec<String>,
    /// At most this many per-peer series on a page (0 = no limit); peers past it are left out
    /// with a warning.
    #[arg(long = "metrics.max-series", default_value_t = DEFAULT_MAX_SERIES)]
    pub max_series: usize,
    /// Add the peer's name (names file or friendly_name comment; empty if none) as a `name`
    /// label to every per-peer series. Renaming a peer then starts new series.
    #[arg(long = "metrics.peer-name-label")]
    pub peer_name_label: bool,
    /// Also serve prometheus_wireguard_exporter's families (wireguard_sent_bytes_total,
    /// wireguard_received_bytes_total, wireguard_latest_handshake_seconds) with its labels,
    /// so dashboards and alerts made for it keep working.
    #[arg(long = "compat", value_name = "EXPORTER", value_parser = ["prometheus-wireguard-exporter"])]
    pub compat: Option<String>,
    /// With --compat: allowed_ip_N and allowed_subnet_N labels instead of allowed_ips (its -s).
    #[arg(long = "compat.separate-allowed-ips", requires = "compat")]
    pub compat_separate_allowed_ips: bool,
    /// With --compat: remote_ip and remote_port labels (its -r).
    #[arg(long = "compat.remote-ip-port", requires = "compat")]
    pub compat_remote_ip_port: bool,
    /// With --compat: wireguard_latest_handshake_delay_seconds (its -d).
    #[arg(long = "compat.handshake-delay", requires = "compat")]
    pub compat_handshake_delay: bool,
    /// wireguard_peer_up is 1 while the peer's last handshake is younger than this.
    #[arg(long = "peer.up-after", value_name = "DURATION", default_value = "180s", value_parser = parse_duration)]
    pub up_after: Duration,
    /// Underlay interface carrying the devices' encrypted datagrams (repeat for several;
    /// default: those the peers' endpoints are routed through). `none`: no programs on the
    /// underlay, counting on the WireGuard interface alone at a wire packet's least cost
    /// (no messages, handshake round trips, encap/decap delay or path loss).
    #[arg(long = "underlay", value_name = "IFACE")]
    pub underlays: Vec<String>,
    /// Enable the kernel's per-program run-time accounting (costs ~40 ns per packet while
    /// on) and export it as wireguard_collector_bpf_*.
    #[arg(long = "bpf.stats")]
    pub bpf_stats: bool,
    /// Pin each device's programs and maps in a directory of this bpffs path, so they keep
    /// counting while the collector restarts or is upgraded [default: /sys/fs/bpf/wg-collector,
    /// where bpffs is mounted if it is not yet].
    #[arg(long = "bpf.pin-path", value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
    /// Do not pin: the programs detach and the counts end when the collector exits.
    #[arg(long = "bpf.no-pin", conflicts_with = "pin_path")]
    pub no_pin: bool,
    /// Replace pinned maps of another layout or size instead of refusing their device (its
    /// counters start again from zero).
    #[arg(long = "bpf.replace-pinned")]
    pub replace_pinned: bool,
    /// Unpin the programs and maps of the --device devices (or all), which detaches them,
    /// and exit. For uninstalling.
    #[arg(long = "bpf.unpin", conflicts_with = "no_pin")]
    pub unpin: bool,
}

/// What `--version` prints: the version, the commit it was built from, and the layout of the
/// maps it pins (two builds with the same layout adopt each other's pins).
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (commit {}, eBPF map layout {:#x})",
            env!("CARGO_PKG_VERSION"),
            env!("WG_COLLECTOR_COMMIT"),
            wg_common::pinning::layout()
        )
    })
}

impl Args {
    /// The command line, with [`version`] for `--version`; exits on bad flags, as clap does.
    pub fn parse_with_version() -> Self {
        let matches = Self::command().version(version()).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}
