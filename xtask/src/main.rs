//! Project tasks: `cargo xtask <setup|build|test|lab|demo>`. Every task but `setup` runs
//! `setup` first, so a fresh Debian 12 machine needs nothing but cargo and root.

mod bench;
mod demo;
mod dist;
mod fuzz;
mod image;
mod lint;
mod package;
mod setup;
mod test;
mod vm;

use std::process::Command;

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
    },
    /// Kernel WireGuard in a qemu guest: the kernel-WireGuard suite (tests/src/bin/vm-suite.rs).
    Vmtest,
    /// Run the collector for --minutes under churn, scrapes and pings; RSS and file
    /// descriptors must stay flat. Writes the soak section of BENCHMARKS.md.
    Soak {
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
    /// Run every fuzz target for --seconds each and write fuzz/RESULTS.md.
    Fuzz {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
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
            setup::run()?;
            build(false)?;
            let (passed, failed) = test::run()?;
            // Formatting and clippy: checks like the others, so the summary counts them.
            let (passed, failed) = lint::run().into_iter().fold((passed, failed), |(p, f), (name, r)| match r {
                Ok(()) => (p + 1, f),
                Err(e) => {
                    eprintln!("{name} failed: {e:#}");
                    (p, f + 1)
                }
            });
            // The static binary, the packages and the image, so they cannot rot; the image
            // then runs against a lab.
            let dist = dist::run().and_then(|_| image::run_against_lab());
            if let Err(e) = &dist {
                eprintln!("dist failed: {e:#}");
            }
            let (passed, failed) = if dist.is_ok() { (passed + 1, failed) } else { (passed, failed + 1) };
            // Kernel WireGuard, in a qemu guest (setup installed qemu).
            let vm = vm::run();
            if let Err(e) = &vm {
                eprintln!("vmtest failed: {e:#}");
            }
            let (passed, failed) = if vm.is_ok() { (passed + 1, failed) } else { (passed, failed + 1) };
            // The benchmark's smoke mode, so it cannot rot.
            let bench = bench::run(true);
            if let Err(e) = &bench {
                eprintln!("bench --quick failed: {e:#}");
            }
            let (passed, failed) = if bench.is_ok() { (passed + 1, failed) } else { (passed, failed + 1) };
            // The README's demo, briefly, so it cannot rot.
            let demo = demo::run(Implementation::WireguardGo, Some(3), "127.0.0.1:0".parse()?);
            let (passed, failed) = if demo.is_ok() { (passed + 1, failed) } else { (passed, failed + 1) };
            // A few seconds of each fuzz target, so none of them rots.
            let (passed, failed) = match fuzz::run(5) {
                Ok(outcomes) => {
                    let bad = outcomes.iter().filter(|o| o.failed()).count() as u64;
                    (passed + outcomes.len() as u64 - bad, failed + bad)
                }
                Err(e) => {
                    eprintln!("fuzz smoke run failed: {e:#}");
                    (passed, failed + 1)
                }
            };
            println!("\nxtask test: {passed} passed, {failed} failed (cargo test, rustfmt and clippy, the static binary, the kernel-WireGuard VM, bench --quick, the demo and 5 s of each fuzz target)");
            demo?;
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
        Task::Vmtest => {
            setup::run()?;
            vm::run()
        }
        Task::Soak { minutes } => {
            setup::run()?;
            bench::soak(minutes)
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            let outcomes = fuzz::run(seconds)?;
            let table = fuzz::table(&outcomes, seconds);
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
        Task::Bench { quick } => {
            setup::run()?;
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
