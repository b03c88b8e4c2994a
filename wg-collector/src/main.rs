use std::{process::ExitCode, sync::Arc};

use anyhow::{bail, Context, Result};
use wg_collector::{
    bpf::{ensure_bpffs, sweep, PinDir, PinOptions, DEFAULT_PIN_ROOT},
    config::{Args, Config, PinRequest},
    http::{
        listen::{ListenAddress, Listeners},
        router::router,
        serve::{serve, Shared},
    },
    memlock,
    names::Names,
    notify::Notifier,
    open_files, privileges,
    refresh::Monitor,
};

fn main() -> ExitCode {
    // Each scrape reads every peer and builds a page of ~1.7 KB per peer (17 MB at 10k
    // peers) in pieces of 0.1-2 MB. Blocks from mmap go back to the kernel when freed and
    // are faulted in afresh by the next scrape: with a threshold of 128 KiB that was ~4,700
    // page faults and a fifth of the CPU of a 10k-peer scrape (87 against 72 ms, measured
    // side by side; more under virtualisation, where a fault costs more). At 4 MiB a 10k-peer
    // scrape's blocks come from the heap the last scrape left; larger ones (50k peers) are
    // mmapped again rather than kept (with glibc's ceiling, 32 MiB, RSS at 50k peers was
    // 267 MiB). Page buffers are kept apart, by metrics::buffers.
    // Two arenas: the blocking pool's threads need not each keep a heap of their own.
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // Colours only on a terminal: journald and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::try_from(Args::parse_with_version()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wg-collector: {e}");
            return ExitCode::from(2);
        }
    };
    if config.unpin {
        return match unpin(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wg-collector: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Everything that needs full privileges happens here, on the only thread, before the
    // capabilities are dropped: threads started later inherit the reduced set.
    let prepared = match prepare(&config) {
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
    match rt.block_on(run(config, prepared)) {
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

/// Checks the privileges and files, enables what needs CAP_SYS_ADMIN, picks the listen
/// address, and drops every capability the daemon does not need from here on.
fn prepare(config: &Config) -> Result<Prepared> {
    let missing = privileges::missing();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(c, why)| format!("{c} (to {why})")).collect();
        bail!("missing privileges: {}; run as root or grant these capabilities", list.join(", "));
    }
    if let Some(m) = wg_collector::bpf::kernel::missing() {
        bail!("{m}");
    }
    let web = &config.web;
    let settings = web.files.load()?;
    let authenticated = settings.authenticates();
    let listen = match (web.listen.clone(), authenticated) {
        (Some(a), _) if authenticated || web.insecure || a.is_loopback() => a,
        (Some(a), _) => bail!(
            "--web.listen-address {a}: not a loopback address, and no authentication is configured (--web.config.file with basic_auth_users or client certificates, or --web.bearer-token-file); per-peer metrics map your network. Pass --web.insecure to serve it anyway"
        ),
        (None, true) => ListenAddress::Socket("[::]:9586".parse()?),
        (None, false) => {
            tracing::warn!(
                "no authentication configured: serving on 127.0.0.1:9586 only (see --web.config.file, --web.bearer-token-file)"
            );
            ListenAddress::Socket("127.0.0.1:9586".parse()?)
        }
    };
    let may_be_open = web.insecure || listen.is_loopback();
    let caps = match open_files::raise() {
        Ok((before, now)) => {
            if now != before {
                tracing::info!(from = before, to = now, "raised the soft limit on open files to the hard limit");
            }
            let caps = open_files::fit(web.caps, now);
            if caps != web.caps {
                tracing::warn!(
                    limit = now,
                    max_connections = caps.total,
                    max_connections_per_client = caps.per_client,
                    "lowered the connection caps to fit the open-files limit (LimitNOFILE=), {} kept for the collector",
                    open_files::RESERVED
                );
            }
            caps
        }
        Err(e) => {
            tracing::warn!("open-files limit not read: {e}; connection caps as asked");
            web.caps
        }
    };
    match memlock::raise() {
        memlock::Memlock::Limited { bytes, kernel } => tracing::warn!(
            "kernel {kernel} charges eBPF maps to the locked-memory limit (kernels before 5.11), which is {bytes} bytes and could not be lifted: maps may fail with EPERM; set LimitMEMLOCK=infinity (ulimit -l unlimited)"
        ),
        memlock::Memlock::Unlimited => tracing::debug!("locked-memory limit lifted (kernel before 5.11)"),
        memlock::Memlock::NotCharged => {}
    }
    let names = Names::load(config.names.clone())?;
    let pins = pin_options(&config.pin)?;
    let stats = if config.bpf_stats {
        Some(aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf stats (--bpf.stats)")?)
    } else {
        None
    };
    let mut extra = Vec::new();
    if !config.refresh.netns.is_own_only() {
        extra.push((caps::Capability::CAP_SYS_ADMIN, "enter other network namespaces (--netns)"));
        // The kernel shows a process's /proc/PID/ns and /proc/PID/root only to one that holds
        // every capability it has, or this: WireGuard daemons run with all of theirs.
        extra.push((
            caps::Capability::CAP_SYS_PTRACE,
            "read other processes' namespaces and container roots, for their UAPI sockets (--netns)",
        ));
    }
    privileges::drop_unneeded(&extra)?;
    let web = Shared::new(settings, web.files.clone(), may_be_open, caps);
    Ok(Prepared { _stats: stats, web, listen, names, pins })
}

/// Where to pin, with bpffs mounted (which needs CAP_SYS_ADMIN, so before the drop). The
/// default path falls back to not pinning, with a warning, where bpffs cannot be had.
fn pin_options(pin: &PinRequest) -> Result<Option<PinOptions>> {
    if pin.off {
        return Ok(None);
    }
    let root = pin.path.clone().unwrap_or_else(|| DEFAULT_PIN_ROOT.into());
    match ensure_bpffs(&root) {
        Ok(()) => Ok(Some(PinOptions { root, replace: pin.replace })),
        Err(e) if pin.path.is_none() => {
            tracing::warn!("not pinning, counts end when the collector exits: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e.context("--bpf.pin-path")),
    }
}

/// --bpf.unpin: removes the pin directories of the --device devices, or all of them.
fn unpin(config: &Config) -> Result<()> {
    let Some(pins) = pin_options(&config.pin)? else { return Ok(()) };
    let devices = &config.refresh.devices;
    if devices.is_empty() {
        let removed = sweep(&pins.root, &[])?;
        println!("unpinned {} device(s) under {}: {}", removed.len(), pins.root.display(), removed.join(" "));
    } else {
        for d in devices {
            PinDir::new(&pins, d).remove()?;
            println!("unpinned {d} under {}", pins.root.display());
        }
    }
    // Filters attached through netlink (kernels before 6.6) hold their programs without pins:
    // they go by name, from the devices asked for or from every interface (underlays too).
    let ifaces: Vec<String> = if devices.is_empty() {
        let all = std::fs::read_dir("/sys/class/net").context("listing /sys/class/net")?;
        all.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    } else {
        devices.clone()
    };
    for iface in ifaces {
        let n = wg_collector::bpf::detach_clsact(&iface);
        if n > 0 {
            println!("detached {n} clsact program(s) from {iface}");
        }
    }
    Ok(())
}

async fn run(config: Config, prepared: Prepared) -> Result<()> {
    let Prepared { _stats, web, listen, names, pins } = prepared;
    let notifier = Arc::new(Notifier::from_env().context("NOTIFY_SOCKET")?);
    if let Some(every) = notifier.ping_every().filter(|e| *e < config.poll_interval) {
        tracing::warn!(
            "--poll-interval {:?} is longer than half of WatchdogSec= ({every:?} between pings): systemd will restart the collector",
            config.poll_interval
        );
    }
    let monitor = Arc::new(Monitor::new(wg_collector::refresh::Options { pins, ..config.refresh }, names));
    // First sync before serving, so the first scrape already finds the programs attached.
    let first = monitor.clone();
    let snap = tokio::task::spawn_blocking(move || first.refresh()).await?;
    let serving = format!("serving {listen}");
    let status = format!("{serving}: {}", summary(&snap));

    // Link events (a device down, deleted, created) refresh at once rather than at the next tick.
    let wake = Arc::new(tokio::sync::Notify::new());
    let waker = wake.clone();
    if let Err(e) = monitor.links().watch(move || waker.notify_one()) {
        tracing::warn!("not following link events, flaps are seen at each poll only: {e}");
    }
    let poller = monitor.clone();
    let interval = config.poll_interval;
    let watchdog = notifier.clone();
    let mut last_status = status.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake.notified() => {}
            }
            let m = poller.clone();
            // A refresh that completes is the sign of life systemd's watchdog waits for.
            if let Ok(snap) = tokio::task::spawn_blocking(move || m.refresh()).await {
                let _ = watchdog.ping();
                let now = format!("{serving}: {}", summary(&snap));
                if now != last_status {
                    let _ = watchdog.status(&now);
                    last_status = now;
                }
            }
        }
    });

    let path = &config.web.telemetry_path;
    let app = router(path, web.clone(), monitor, config.export, config.scrape_max_age);
    let listeners = Listeners::open(&listen, web.gate.clone()).await?;
    let tls = web.current().tls.is_some();
    tracing::info!(address = %listen, path = %path, tls, authentication = web.current().authenticates(), "serving metrics");
    web.clone().watch();
    if let Err(e) = notifier.ready(&status) {
        tracing::warn!("could not tell systemd the collector is ready (NOTIFY_SOCKET): {e}");
    }
    serve(listeners, app, web, shutdown()).await
}

/// What STATUS= says: the devices and peers followed, and the errors so far.
fn summary(snap: &wg_collector::refresh::Snapshot) -> String {
    let peers: usize = snap.devices.iter().map(|d| d.state.peers.len()).sum();
    let errors: u64 = snap.errors.iter().map(|(_, n)| n).sum();
    format!("{} WireGuard devices, {peers} peers, {errors} errors", snap.devices.len())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
