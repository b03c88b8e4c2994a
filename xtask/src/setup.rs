//! Installs what the project needs, only what is missing: the recipe of
//! ../shared/docs/toolchain.md (Debian's rustc-web with the BPF std, bpf-linker built
//! against Debian's LLVM 22) and the lab's tools. Nothing is downloaded by rustup.

use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::sh;

/// Debian packages: the BPF toolchain, WireGuard implementations and tools, traffic and
/// namespace tools.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "wireguard-tools",
    "wireguard-go",
    "iperf3",
    "iputils-ping",
    "iproute2",
    "util-linux",
    "bpftool",
    // HTTP load on /metrics (issue 9's load case).
    "wrk",
    // A real Prometheus scrapes the collector in the tests; promtool checks rules.
    "prometheus",
    // The fleet test writes through Prometheus' remote_write into InfluxDB 1.6.
    "influxdb",
    // The live page is tested in headless Chromium.
    "chromium",
    "fonts-dejavu-core",
    // The systemd unit is checked with systemd-analyze.
    "systemd",
    // Kernel WireGuard runs in a qemu guest (cargo xtask vmtest).
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    // cargo xtask dist: lintian checks the .deb, rpm lists the .rpm, buildah builds the
    // image and podman (with runc) runs it.
    "lintian",
    "rpm",
    "buildah",
    "podman",
    "runc",
    // cargo xtask vmtest --boot: a Debian 13 root for the systemd boot test.
    "mmdebstrap",
];

const BPF_LINKER: &str = "0.13.0";
const BORINGTUN: &str = "0.7.1";
const CARGO_FUZZ: &str = "0.13.2";
const CARGO_DEB: &str = "3.8.0";
const CARGO_GENERATE_RPM: &str = "0.21.1";
/// The exporter most users run today: measured beside us (bench) and matched by --compat.
const WIREGUARD_EXPORTER: &str = "3.6.6";

pub fn run() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        require_root(&format!("installing {}", missing.join(" ")))?;
        eprintln!("setup: installing {}", missing.join(" "));
        sh(Command::new("apt-get").arg("update").arg("-q"))?;
        // Without --no-install-recommends wireguard-tools pulls in a kernel image.
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !has_version("bpf-linker", BPF_LINKER) {
        eprintln!("setup: building bpf-linker {BPF_LINKER} against LLVM 22 (about a minute)");
        sh(cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    if !has_version("boringtun-cli", BORINGTUN) {
        eprintln!("setup: building boringtun-cli {BORINGTUN} (about a minute)");
        sh(cargo().args(["install", "boringtun-cli", "--locked", "--version", BORINGTUN]))?;
    }
    if !has_version("cargo-fuzz", CARGO_FUZZ) {
        eprintln!("setup: building cargo-fuzz {CARGO_FUZZ} (about a minute; cargo xtask fuzz)");
        sh(cargo().args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ]))?;
    }
    // The packagers (cargo xtask dist): the .deb and .rpm from wg-collector/Cargo.toml's metadata.
    // prometheus_wireguard_exporter: tests/tests/compat.rs runs it beside us; the bench measures it.
    for (krate, version) in [
        ("cargo-deb", CARGO_DEB),
        ("cargo-generate-rpm", CARGO_GENERATE_RPM),
        ("prometheus_wireguard_exporter", WIREGUARD_EXPORTER),
    ] {
        if !has_version(krate, version) {
            eprintln!("setup: building {krate} {version} (about a minute)");
            sh(cargo().args(["install", krate, "--locked", "--version", version]))?;
        }
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Whether `tool --version` (on PATH or in cargo's bin directory) names `version`.
fn has_version(tool: &str, version: &str) -> bool {
    let path = wg_tests::lab::tool(tool).unwrap_or_else(|_| tool.into());
    Command::new(path)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root: run `sudo cargo xtask setup` once");
    }
    Ok(())
}
