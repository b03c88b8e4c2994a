//! Debian's cloud kernels and roots for the qemu guests, from Debian's archive through a
//! private apt configuration under target/vm/apt/<release> (its own sources list, lists and
//! cache): nothing is installed on the host and the host's apt state is not touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::{output, sh, vm::WORK};

const MIRROR: &str = "http://deb.debian.org/debian";
/// The host's keyring holds the archive keys of Debian 11, 12 and 13.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The kernels gateways run that Debian ships as cloud kernels (with WireGuard as a module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kernel {
    /// Debian 11 (bullseye): 5.10, which the collector refuses (no BPF_XCHG).
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12 (bookworm): 6.1.
    #[value(name = "6.1")]
    V6_1,
    /// Debian 13 (trixie): 6.12, also RHEL 10's base.
    #[value(name = "6.12")]
    V6_12,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::V5_10, Kernel::V6_1, Kernel::V6_12];

    pub fn release(self) -> &'static str {
        match self {
            Kernel::V5_10 => "bullseye",
            Kernel::V6_1 => "bookworm",
            Kernel::V6_12 => "trixie",
        }
    }

    /// Whether the programs run on it (the atomic instructions came in 5.12); the collector
    /// refuses the others at start.
    pub fn runs_programs(self) -> bool {
        self != Kernel::V5_10
    }

    pub fn label(self) -> &'static str {
        match self {
            Kernel::V5_10 => "5.10 (Debian 11)",
            Kernel::V6_1 => "6.1 (Debian 12)",
            Kernel::V6_12 => "6.12 (Debian 13)",
        }
    }
}

/// apt-get or apt-cache with the private configuration of `release`.
fn apt(tool: &str, release: &str) -> Result<Command> {
    let dir = std::env::current_dir()?.join(WORK).join("apt").join(release);
    for d in ["lists/partial", "cache/archives/partial", "etc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let list = dir.join("etc/sources.list");
    std::fs::write(&list, format!("deb [signed-by={KEYRING}] {MIRROR} {release} main\n"))?;
    let mut c = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", list.display().to_string()),
        ("Dir::Etc::SourceParts", "/nonexistent".into()),
        ("Dir::State::Lists", dir.join("lists").display().to_string()),
        ("Dir::Cache", dir.join("cache").display().to_string()),
        ("Dir::State::status", "/var/lib/dpkg/status".into()),
        ("APT::Architecture", "amd64".into()),
    ] {
        c.arg("-o").arg(format!("{k}={v}"));
    }
    Ok(c)
}

/// Debian `release`'s current cloud kernel, extracted under target/vm (downloaded once):
/// its folder and version.
pub fn fetch(kernel: Kernel) -> Result<(PathBuf, String)> {
    let release = kernel.release();
    let lists = Path::new(WORK).join("apt").join(release).join("lists");
    let fresh = std::fs::read_dir(&lists).map(|d| d.count() > 2).unwrap_or(false);
    if !fresh {
        sh(apt("apt-get", release)?.args(["update", "-q"]))?;
    }
    let deps = output(apt("apt-cache", release)?.args(["depends", "linux-image-cloud-amd64"]))?;
    let pkg = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
        .with_context(|| format!("{release}'s apt lists do not name the cloud kernel's image package"))?
        .to_string();
    let dir = Path::new(WORK).join(&pkg);
    if !dir.join("boot").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        sh(apt("apt-get", release)?.args(["download", "-q", &pkg]).current_dir(WORK))?;
        let deb = std::fs::read_dir(WORK)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_"))))
            .context("the downloaded kernel package")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::remove_file(deb)?;
    }
    let version = std::fs::read_dir(dir.join("boot"))?
        .flatten()
        .find_map(|e| e.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_string))
        .context("no vmlinuz in the kernel package")?;
    // The package leaves modules.dep to the installing machine's depmod: make it here, where
    // depmod -b looks (lib/modules; Debian 13 ships usr/lib/modules).
    if !dir.join("lib").exists() && dir.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", dir.join("lib"))?;
    }
    if !dir.join("lib/modules").join(&version).join("modules.dep").exists() {
        sh(Command::new("depmod").arg("-b").arg(&dir).arg(&version))?;
    }
    Ok((dir, version))
}
