use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Parser;
use wg_collector::{
    bpf::{ensure_bpffs, sweep, PinDir, PinOptions, ProbeOptions, DEFAULT_PIN_ROOT},
    histogram::Buckets,
    metrics::ExportOptions,
    monitor::{Monitor, Options},
    names::{NameSources, Names},
    privileges, server,
    web::{
        listen::{ListenAddress, Listeners},
        serve::{serve, Shared, Sources},
    },
    wireguard::discovery::DEFAULT_UAPI_DIR,
};
use wg_common::{DEFAULT_MAX_ALLOWED_IPS, DEFAULT_MAX_HIST_ENTRIES, DEFAULT_MAX_PEERS, DEFAULT_MAX_PENDING};

/// WireGuard telemetry collector: per-peer packet counters measured by eBPF on the
/// WireGuard interface, merged with WireGuard's own state, served to Prometheus.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to serve metrics on. Default: [::]:9586 when authentication is configured,
    /// else 127.0.0.1:9586 (loopback only).
    /// INTERFACE:PORT (wg0:9586) listens on every address of that interface only, following
    /// them as they change: the metrics are then reachable over the VPN alone.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_address: Option<ListenAddress>,
    /// TLS and basic auth settings, in the format of prometheus/exporter-toolkit
    /// (node_exporter's --web.config.file). Reloaded on SIGHUP and when it changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config: Option<PathBuf>,
    /// Bearer tokens, one per line (Prometheus: authorization.credentials_file). Reloaded on
    /// SIGHUP and when it changes.
    #[arg(long = "web.bearer-token-file", value_name = "FILE")]
    bearer_token_file: Option<PathBuf>,
    /// Allow serving a non-loopback address without authentication.
    #[arg(long = "web.insecure")]
    insecure: bool,
    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", default_value = "/metrics")]
    telemetry_path: String,
    /// Only watch this device (repeat for several; default: every WireGuard device).
    #[arg(long = "device", value_name = "NAME")]
    devices: Vec<String>,
    /// Directory of the UAPI sockets of userspace WireGuard implementations.
    #[arg(long = "uapi-dir", default_value = DEFAULT_UAPI_DIR)]
    uapi_dir: PathBuf,
    /// How often devices and peers are re-read to keep the eBPF maps in sync, in seconds.
    #[arg(long = "poll-interval", default_value_t = 1.0)]
    poll_interval: f64,
    /// Let a scrape show the last reading of WireGuard and the maps if it began at most this
    /// many seconds ago (the poll loop reads every --poll-interval); 0 = read at every scrape.
    /// For many peers on userspace WireGuard, whose state is slow to read (wireguard-go at 10k
    /// peers: ~80 ms a reading), and for several Prometheus servers scraping one gateway.
    #[arg(long = "scrape.max-age", default_value_t = 0.0)]
    scrape_max_age: f64,
    /// Peer slots per device in the eBPF maps.
    #[arg(long = "bpf.max-peers", default_value_t = DEFAULT_MAX_PEERS)]
    max_peers: u32,
    /// Allowed-IP prefixes per address family and device in the eBPF maps.
    #[arg(long = "bpf.max-allowed-ips", default_value_t = DEFAULT_MAX_ALLOWED_IPS)]
    max_allowed_ips: u32,
    /// Latency histogram boundaries in seconds, comma-separated, or "full" for every kernel
    /// bucket (16 per power of two).
    #[arg(
        long = "latency.buckets",
        default_value = "0.00005,0.0001,0.00025,0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10"
    )]
    latency_buckets: Buckets,
    /// Record one in N matchable packets for latency (a power of two; 1 = every packet).
    #[arg(long = "latency.sample", default_value_t = 1)]
    latency_sample: u32,
    /// Seconds a packet may wait for its answer before it is forgotten.
    #[arg(long = "latency.pending-ttl", default_value_t = 5.0)]
    pending_ttl: f64,
    /// Places for packets waiting for their answer, per device (a power of two: a hash of
    /// the flow picks the place, and a newer packet takes an occupied one).
    #[arg(long = "latency.max-pending", default_value_t = DEFAULT_MAX_PENDING)]
    max_pending: u32,
    /// Latency histogram entries (peer, method, bucket) per device.
    #[arg(long = "latency.max-hist-entries", default_value_t = DEFAULT_MAX_HIST_ENTRIES)]
    max_hist_entries: u32,
    /// Do not measure encap/decap delay (it reads the clock for every packet).
    #[arg(long = "latency.no-delay")]
    no_delay: bool,
    /// A names file: "public-key name" per line (repeat for several).
    #[arg(long = "names.file", value_name = "FILE")]
    names_files: Vec<PathBuf>,
    /// A wg-quick configuration whose [Peer] sections carry "# friendly_name = ..." comments
    /// (repeat for several).
    #[arg(long = "names.wg-config", value_name = "FILE")]
    wg_configs: Vec<PathBuf>,
    /// Hide what maps your network: endpoints (the endpoint label), allowed-ips (the
    /// wireguard_peer_allowed_ips_info family), or all; repeatable.
    #[arg(long = "redact", value_name = "WHAT", value_parser = ["endpoints", "allowed-ips", "all"])]
    redact: Vec<String>,
    /// At most this many per-peer series on a page (0 = no limit); peers past it are left out
    /// with a warning.
    #[arg(long = "metrics.max-series", default_value_t = 2_000_000)]
    max_series: usize,
    /// Underlay interface carrying the devices' encrypted datagrams (repeat for several;
    /// default: those the peers' endpoints are routed through).
    #[arg(long = "underlay", value_name = "IFACE")]
    underlays: Vec<String>,
    /// Enable the kernel's per-program run-time accounting (costs ~40 ns per packet while
    /// on) and export it as wireguard_collector_bpf_*.
    #[arg(long = "bpf.stats")]
    bpf_stats: bool,
    /// Pin each device's programs and maps in a directory of this bpffs path, so they keep
    /// counting while the collector restarts or is upgraded [default: /sys/fs/bpf/wg-collector,
    /// where bpffs is mounted if it is not yet].
    #[arg(long = "bpf.pin-path", value_name = "DIR")]
    pin_path: Option<PathBuf>,
    /// Do not pin: the programs detach and the counts end when the collector exits.
    #[arg(long = "bpf.no-pin", conflicts_with = "pin_path")]
    no_pin: bool,
    /// Replace pinned maps of another layout or size instead of refusing their device (its
    /// counters start again from zero).
    #[arg(long = "bpf.replace-pinned")]
    replace_pinned: bool,
    /// Unpin the programs and maps of the --device devices (or all), which detaches them,
    /// and exit. For uninstalling.
    #[arg(long = "bpf.unpin", conflicts_with = "no_pin")]
    unpin: bool,
}

fn main() -> ExitCode {
    // Each scrape builds a page of ~1.3 KB per peer (13 MB at 10k peers). glibc raises its
    // mmap threshold to the largest block freed, so from the second scrape on such pages
    // would come from the heap and stay in RSS; a fixed threshold hands them back at once.
    // Two arenas: the blocking pool's threads need not each keep a heap of their own.
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // Colours only on a terminal: journald and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.unpin {
        return match unpin(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wg-collector: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Everything that needs full privileges happens here, on the only thread, before the
    // capabilities are dropped: threads started later inherit the reduced set.
    let prepared = match prepare(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wg-collector: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wg-collector: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wg-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `prepare` made ready for `run`.
struct Prepared {
    /// Keeps bpf stats on while it lives.
    _stats: Option<std::os::fd::OwnedFd>,
    web: Arc<Shared>,
    listen: ListenAddress,
    names: Names,
    pins: Option<PinOptions>,
}

/// Checks the flags and files, enables what needs CAP_SYS_ADMIN, picks the listen address,
/// and drops every capability the daemon does not need from here on.
fn prepare(args: &Args) -> Result<Prepared> {
    if !args.telemetry_path.starts_with('/') || args.telemetry_path == "/" || args.telemetry_path == "/-/healthy" {
        bail!("--web.telemetry-path {:?}: must start with / and not be / or /-/healthy", args.telemetry_path);
    }
    if !(0.05..=3600.0).contains(&args.poll_interval) {
        bail!("--poll-interval {}: must be between 0.05 and 3600 seconds", args.poll_interval);
    }
    if !(0.0..=3600.0).contains(&args.scrape_max_age) {
        bail!("--scrape.max-age {}: must be between 0 and 3600 seconds", args.scrape_max_age);
    }
    if !args.latency_sample.is_power_of_two() {
        bail!("--latency.sample {}: must be a power of two (1, 2, 4, ...)", args.latency_sample);
    }
    if !args.max_pending.is_power_of_two() {
        bail!("--latency.max-pending {}: must be a power of two (65536, 131072, ...)", args.max_pending);
    }
    if !(0.1..=3600.0).contains(&args.pending_ttl) {
        bail!("--latency.pending-ttl {}: must be between 0.1 and 3600 seconds", args.pending_ttl);
    }
    let missing = privileges::missing();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(c, why)| format!("{c} (to {why})")).collect();
        bail!("missing privileges: {}; run as root or grant these capabilities", list.join(", "));
    }
    let sources = Sources { web_config: args.web_config.clone(), token_file: args.bearer_token_file.clone() };
    let settings = sources.load()?;
    let authenticated = settings.authenticates();
    let listen = match (args.listen_address.clone(), authenticated) {
        (Some(a), _) if authenticated || args.insecure || a.is_loopback() => a,
        (Some(a), _) => bail!(
            "--web.listen-address {a}: not a loopback address, and no authentication is configured (--web.config.file with basic_auth_users or client certificates, or --web.bearer-token-file); per-peer metrics map your network. Pass --web.insecure to serve it anyway"
        ),
        (None, true) => ListenAddress::Socket("[::]:9586".parse()?),
        (None, false) => {
            tracing::warn!("no authentication configured: serving on 127.0.0.1:9586 only (see --web.config.file, --web.bearer-token-file)");
            ListenAddress::Socket("127.0.0.1:9586".parse()?)
        }
    };
    let may_be_open = args.insecure || listen.is_loopback();
    let names =
        Names::load(NameSources { names_files: args.names_files.clone(), wg_configs: args.wg_configs.clone() })?;
    let pins = pin_options(args)?;
    let stats = if args.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf stats (--bpf.stats)")?)
    } else {
        None
    };
    privileges::drop_unneeded()?;
    Ok(Prepared { _stats: stats, web: Shared::new(settings, sources, may_be_open), listen, names, pins })
}

/// Where to pin, with bpffs mounted (which needs CAP_SYS_ADMIN, so before the drop). The
/// default path falls back to not pinning, with a warning, where bpffs cannot be had.
fn pin_options(args: &Args) -> Result<Option<PinOptions>> {
    if args.no_pin {
        return Ok(None);
    }
    let root = args.pin_path.clone().unwrap_or_else(|| DEFAULT_PIN_ROOT.into());
    match ensure_bpffs(&root) {
        Ok(()) => Ok(Some(PinOptions { root, replace: args.replace_pinned })),
        Err(e) if args.pin_path.is_none() => {
            tracing::warn!("not pinning, counts end when the collector exits: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e.context("--bpf.pin-path")),
    }
}

/// --bpf.unpin: removes the pin directories of the --device devices, or all of them.
fn unpin(args: &Args) -> Result<()> {
    let Some(pins) = pin_options(args)? else { return Ok(()) };
    if args.devices.is_empty() {
        let removed = sweep(&pins.root, &[])?;
        println!("unpinned {} device(s) under {}: {}", removed.len(), pins.root.display(), removed.join(" "));
    } else {
        for d in &args.devices {
            PinDir::new(&pins, d).remove()?;
            println!("unpinned {d} under {}", pins.root.display());
        }
    }
    Ok(())
}

async fn run(args: Args, prepared: Prepared) -> Result<()> {
    let Prepared { _stats, web, listen, names, pins } = prepared;
    let redact = |what: &str| args.redact.iter().any(|r| r == what || r == "all");
    let monitor = Arc::new(Monitor::new(
        Options {
            uapi_dir: args.uapi_dir,
            devices: args.devices,
            probe: ProbeOptions {
                max_peers: args.max_peers,
                max_allowed_ips: args.max_allowed_ips,
                max_pending: args.max_pending,
                max_hist_entries: args.max_hist_entries,
                latency_sample: args.latency_sample,
                delay: !args.no_delay,
                log_level: log::max_level(),
            },
            pending_ttl: Duration::from_secs_f64(args.pending_ttl),
            underlays: args.underlays,
            pins,
        },
        names,
    ));
    // First sync before serving, so the first scrape already finds the programs attached.
    let first = monitor.clone();
    tokio::task::spawn_blocking(move || first.refresh()).await?;

    // Link events (a device down, deleted, created) refresh at once rather than at the next tick.
    let wake = Arc::new(tokio::sync::Notify::new());
    let waker = wake.clone();
    if let Err(e) = monitor.links().watch(move || waker.notify_one()) {
        tracing::warn!("not following link events, flaps are seen at each poll only: {e}");
    }
    let poller = monitor.clone();
    let interval = Duration::from_secs_f64(args.poll_interval);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake.notified() => {}
            }
            let m = poller.clone();
            let _ = tokio::task::spawn_blocking(move || m.refresh()).await;
        }
    });

    let export = ExportOptions {
        buckets: args.latency_buckets,
        redact_endpoints: redact("endpoints"),
        redact_allowed_ips: redact("allowed-ips"),
        max_series: args.max_series,
        max_age: Duration::from_secs_f64(args.scrape_max_age),
    };
    let app = server::router(&args.telemetry_path, web.clone(), monitor, export);
    let listeners = Listeners::open(&listen).await?;
    let tls = web.current().tls.is_some();
    tracing::info!(address = %listen, path = %args.telemetry_path, tls, authentication = web.current().authenticates(), "serving metrics");
    web.clone().watch();
    serve(listeners, app, web, shutdown()).await
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
