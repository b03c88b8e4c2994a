//! Project tasks: `cargo xtask <setup|build|test|lab|demo>`. Every task but `setup` runs
//! `setup` first, so a fresh Debian 12 machine needs nothing but cargo and root.

mod bench;
mod boot;
mod demo;
mod dist;
mod fuzz;
mod image;
mod kernels;
mod lint;
mod package;
mod setup;
mod test;
mod vm;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use wg_tests::Implementation;

#[derive(Parser)]
#[command(about = "wg-collector project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, bpf-linker, boringtun, cargo-fuzz); idempotent.
    Setup,
    /// What an operator installs, in target/dist/: the static binary, the .deb, the .rpm
    /// and the OCI image, each checked.
    Dist {
        /// Then run the image with podman against a lab and read exact counts (as `test` does).
        #[arg(long)]
        run_image: bool,
    },
    /// Build the eBPF programs and the collector.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// rustfmt and clippy, as `test` runs them.
    Lint,
    /// Build, then run every unit and integration test (needs root: labs use namespaces and BPF).
    Test,
    /// Measure (eBPF cost per packet and hook) and write the table into BENCHMARKS.md.
    Bench {
        /// A few seconds' smoke run; prints the table, writes nothing.
        #[arg(long)]
        quick: bool,
        /// Only kernel WireGuard's state at scale (the qemu guest); prints its table, writes
        /// nothing.
        #[arg(long)]
        vm_only: bool,
        /// With --vm-only: the guest device's sizes, comma-separated [default: 1000,10000,50000;
        /// prometheus_wireguard_exporter then only up to 1,000].
        #[arg(long, requires = "vm_only")]
        peers: Option<String>,
        /// With --vm-only: where the guest's time goes in three scrapes of each size before
        /// the timed rounds (perf record of every CPU, the report on the console; needs
        /// linux-perf).
        #[arg(long, requires = "vm_only")]
        profile: bool,
    },
    /// Kernel WireGuard in qemu guests: the kernel-WireGuard suite (tests/src/bin/vm-suite.rs)
    /// on Debian's cloud kernels, or with --boot the .deb under systemd on Debian 13.
    Vmtest {
        /// Kernels to run the suite on: 5.10, 6.1, 6.12 or all (repeatable) [default: what
        /// CI runs, vm::CI_KERNELS].
        #[arg(long, value_parser = parse_kernels)]
        kernel: Vec<Vec<kernels::Kernel>>,
        /// Instead: boot Debian 13 with systemd, install the .deb, run the shipped unit
        /// (tests/src/bin/boot-suite.rs).
        #[arg(long, conflicts_with = "kernel")]
        boot: bool,
    },
    /// Run the collector for --minutes under churn, scrapes and pings; RSS and file
    /// descriptors must stay flat. Writes the soak section of BENCHMARKS.md.
    Soak {
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Run every fuzz target (or those named by --target) for --seconds each and write their
    /// rows of fuzz/RESULTS.md.
    Fuzz {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// Start a lab of two WireGuard peers in namespaces and keep it until Ctrl-C.
    Lab {
        #[arg(long = "impl", value_enum, default_value_t = Impl::WireguardGo)]
        implementation: Impl,
    },
    /// A lab with traffic and the collector attached; serves the metrics on the host's loopback.
    Demo {
        #[arg(long = "impl", value_enum, default_value_t = Impl::WireguardGo)]
        implementation: Impl,
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long)]
        seconds: Option<u64>,
        /// Host address for the metrics.
        #[arg(long, default_value = "127.0.0.1:9586")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Impl {
    WireguardGo,
    Boringtun,
}

impl From<Impl> for Implementation {
    fn from(i: Impl) -> Self {
        match i {
            Impl::WireguardGo => Implementation::WireguardGo,
            Impl::Boringtun => Implementation::Boringtun,
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::env::set_current_dir(workspace_root())?;
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release)
        }
        Task::Test => {
            // Each phase's wall time, printed at the end: CI has a budget, and this says where
            // it goes.
            let mut phases = Vec::new();
            timed(&mut phases, "setup and build", || -> Result<()> {
                setup::run()?;
                build(false)
            })?;
            let (passed, failed) = timed(&mut phases, "cargo test", test::run)?;
            // Formatting and clippy: checks like the others, so the summary counts them.
            let lints = timed(&mut phases, "rustfmt and clippy", lint::run);
            let (passed, failed) = lints.into_iter().fold((passed, failed), |(p, f), (name, r)| match r {
                Ok(()) => (p + 1, f),
                Err(e) => {
                    eprintln!("{name} failed: {e:#}");
                    (p, f + 1)
                }
            });
            let (mut passed, mut failed) = (passed, failed);
            let mut tally = |what: &str, r: Result<()>| match r {
                Ok(()) => passed += 1,
                Err(e) => {
                    eprintln!("{what} failed: {e:#}");
                    failed += 1;
                }
            };
            // The static binary, the packages and the image, so they cannot rot; the image
            // then runs against a lab, the .deb under systemd in a Debian 13 guest.
            let deb = timed(&mut phases, "dist", dist::run);
            tally("dist", deb.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("{e:#}")));
            tally("the image in podman", timed(&mut phases, "the image in podman", image::run_against_lab));
            tally("vmtest --boot", timed(&mut phases, "vmtest --boot", || deb.and_then(|deb| boot::run(&deb))));
            // Kernel WireGuard, in qemu guests on the kernels CI covers.
            tally("vmtest", timed(&mut phases, "vmtest", || vm::run(vm::CI_KERNELS)));
            // The benchmark's smoke mode, so it cannot rot.
            tally("bench --quick", timed(&mut phases, "bench --quick", || bench::run(true)));
            // The README's demo, briefly, so it cannot rot.
            let listen = "127.0.0.1:0".parse()?;
            let demo = || demo::run(Implementation::WireguardGo, Some(3), listen);
            tally("the demo", timed(&mut phases, "the demo", demo));
            // A few seconds of each fuzz target, so none of them rots.
            match timed(&mut phases, "fuzz", || fuzz::run(5, &[], fuzz::Build::Dev)) {
                Ok(outcomes) => {
                    for o in &outcomes {
                        tally(
                            &format!("fuzz target {}", o.target),
                            if o.failed() {
                                Err(anyhow::anyhow!("{} runs, crashed: {}", o.runs, o.crashed))
                            } else {
                                Ok(())
                            },
                        );
                    }
                }
                Err(e) => tally("the fuzz smoke run", Err(e)),
            }
            let total: Duration = phases.iter().map(|p| p.1).sum();
            println!("\nxtask test: where the time went ({:.1} min in all)", total.as_secs_f64() / 60.0);
            for (name, d) in &phases {
                println!("  {name:<22} {:>6.0} s", d.as_secs_f64());
            }
            println!("\nxtask test: {passed} passed, {failed} failed (cargo test, rustfmt and clippy, dist and the image in podman, the .deb booted under systemd, the kernel-WireGuard VMs, bench --quick, the demo and 5 s of each fuzz target)");
            if failed > 0 {
                bail!("{failed} tests failed");
            }
            Ok(())
        }
        Task::Dist { run_image } => {
            setup::run()?;
            dist::run()?;
            if run_image {
                image::run_against_lab()?;
            }
            Ok(())
        }
        Task::Lint => {
            let failed: Vec<&str> = lint::run().into_iter().filter(|(_, r)| r.is_err()).map(|(n, _)| n).collect();
            if !failed.is_empty() {
                bail!("failed: {}", failed.join(", "));
            }
            Ok(())
        }
        Task::Vmtest { kernel, boot } => {
            setup::run()?;
            if boot {
                let deb = dist::run()?;
                return boot::run(&deb);
            }
            let kernels: Vec<kernels::Kernel> = kernel.into_iter().flatten().collect();
            vm::run(if kernels.is_empty() { vm::CI_KERNELS } else { &kernels })
        }
        Task::Soak { minutes } => {
            setup::run()?;
            bench::soak(minutes)
        }
        Task::Fuzz { seconds, targets } => {
            setup::run()?;
            let outcomes = fuzz::run(seconds, &targets, fuzz::Build::Release)?;
            let previous = std::fs::read_to_string("fuzz/RESULTS.md").unwrap_or_default();
            let table = fuzz::table(&outcomes, &previous);
            print!("\n{table}");
            std::fs::write("fuzz/RESULTS.md", &table)?;
            if outcomes.iter().any(|o| o.crashed) {
                bail!("a fuzz target crashed; its input is in fuzz/artifacts/");
            }
            if outcomes.iter().any(|o| o.runs == 0) {
                bail!("a fuzz target ran no input");
            }
            Ok(())
        }
        Task::Bench { quick, vm_only, peers, profile } => {
            setup::run()?;
            if vm_only {
                print!("{}", vm::scale(quick, peers.as_deref(), profile)?);
                return Ok(());
            }
            bench::run(quick)
        }
        Task::Lab { implementation } => {
            setup::run()?;
            demo::lab(implementation.into())
        }
        Task::Demo { implementation, seconds, listen } => {
            setup::run()?;
            build(false)?;
            demo::run(implementation.into(), seconds, listen)
        }
    }
}

/// `--kernel 6.12` or `--kernel all`.
fn parse_kernels(s: &str) -> Result<Vec<kernels::Kernel>, String> {
    if s == "all" {
        return Ok(kernels::Kernel::ALL.to_vec());
    }
    kernels::Kernel::from_str(s, false).map(|k| vec![k]).map_err(|_| format!("{s:?}: one of 5.10, 6.1, 6.12, all"))
}

pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "--package", "wg-collector"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub(crate) fn output(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs a command with its output shown; an error if it fails.
pub(crate) fn sh(c: &mut Command) -> Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

/// The time of the checked-out commit (Unix seconds): what the packages and the image are
/// dated by, so that two builds of one commit are the same files.
pub(crate) fn commit_time() -> Option<String> {
    let o = Command::new("git").args(["log", "-1", "--format=%ct"]).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

pub(crate) fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `f`, adding its wall time to `phases` under `name`.
fn timed<T>(phases: &mut Vec<(&'static str, Duration)>, name: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    phases.push((name, t.elapsed()));
    r
}
