//! The .deb (cargo-deb) and the .rpm (cargo-generate-rpm) around the static binary, as
//! wg-collector/Cargo.toml describes them; each is checked after it is built: its listing
//! (every path with its mode, exactly), its configuration files, that its binary is the one
//! `dist` checked, and lintian for the .deb.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{dist::TARGET, output};

/// What the .deb installs (directories left out): `dpkg -c` must list exactly these.
const DEB_FILES: &[(&str, &str)] = &[
    ("-rw-r--r--", "/etc/default/wg-collector"),
    ("-rwxr-xr-x", "/usr/bin/wg-collector"),
    ("-rw-r--r--", "/usr/lib/systemd/system/wg-collector.service"),
    ("-rw-r--r--", "/usr/share/bash-completion/completions/wg-collector"),
    ("-rw-r--r--", "/usr/share/doc/wg-collector/README.md"),
    ("-rw-r--r--", "/usr/share/doc/wg-collector/changelog.Debian.gz"),
    ("-rw-r--r--", "/usr/share/doc/wg-collector/copyright"),
    ("-rw-r--r--", "/usr/share/fish/vendor_completions.d/wg-collector.fish"),
    ("-rw-r--r--", "/usr/share/lintian/overrides/wg-collector"),
    ("-rw-r--r--", "/usr/share/man/man1/wg-collector.1.gz"),
    ("-rw-r--r--", "/usr/share/zsh/vendor-completions/_wg-collector"),
];

/// What the .rpm installs: `rpm -qlp` must list exactly these (RHEL's paths for the
/// environment file and zsh).
const RPM_FILES: &[(&str, &str)] = &[
    ("-rw-r--r--", "/etc/sysconfig/wg-collector"),
    ("-rwxr-xr-x", "/usr/bin/wg-collector"),
    ("-rw-r--r--", "/usr/lib/systemd/system/wg-collector.service"),
    ("-rw-r--r--", "/usr/share/bash-completion/completions/wg-collector"),
    ("-rw-r--r--", "/usr/share/doc/wg-collector/README.md"),
    ("-rw-r--r--", "/usr/share/fish/vendor_completions.d/wg-collector.fish"),
    ("-rw-r--r--", "/usr/share/man/man1/wg-collector.1.gz"),
    ("-rw-r--r--", "/usr/share/zsh/site-functions/_wg-collector"),
];

/// Writes the man page and completions where both packages take them from
/// (target/<triple>/release/docs: "target/release/" in their asset lists).
pub fn docs() -> Result<()> {
    let dir = format!("target/{TARGET}/release/docs");
    crate::cargo(&[
        "run",
        "--quiet",
        "--release",
        "--package",
        "wg-collector",
        "--example",
        "generate-docs",
        "--",
        &dir,
    ])
}

/// Builds the .deb into target/dist and checks it; returns its path.
pub fn deb(binary: &Path) -> Result<PathBuf> {
    // --no-strip: dist stripped the binary already, so the package holds the very file it checked.
    output(reproducible(Command::new(crate::cargo_bin()).args([
        "deb",
        "--package",
        "wg-collector",
        "--no-build",
        "--no-strip",
        "--target",
        TARGET,
        "--output",
        "target/dist/",
    ])))
    .context("cargo deb (cargo xtask setup installs it)")?;
    let deb = PathBuf::from(format!("target/dist/wg-collector_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")));
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    let files: Vec<(String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.last()?.trim_start_matches('.').to_string()))
        })
        .collect();
    same_files("dpkg -c", &deb, &files, DEB_FILES)?;
    let conffiles = output(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"))?;
    if conffiles.trim() != "/etc/default/wg-collector" {
        bail!("{} has conffiles {conffiles:?}; only /etc/default/wg-collector is one", deb.display());
    }
    let packed = output(
        Command::new("sh")
            .arg("-c")
            .arg(format!("dpkg-deb --fsys-tarfile '{}' | tar -xO ./usr/bin/wg-collector | sha256sum", deb.display())),
    )?;
    same_binary(&deb, &packed, binary)?;
    // lintian: errors and warnings fail (deploy/debian/lintian-overrides holds the justified
    // ones); information tags are shown.
    let lint = Command::new("lintian").args(["--display-info", "--tag-display-limit", "0"]).arg(&deb).output()?;
    let said = String::from_utf8_lossy(&lint.stdout);
    for line in said.lines() {
        println!("dist: lintian: {line}");
    }
    if said.lines().any(|l| l.starts_with("E: ") || l.starts_with("W: ")) || !lint.status.success() {
        bail!("lintian finds errors or warnings in {}", deb.display());
    }
    Ok(deb)
}

/// Builds the .rpm into target/dist and checks it; returns its path.
pub fn rpm(binary: &Path) -> Result<PathBuf> {
    output(reproducible(Command::new(crate::cargo_bin()).args([
        "generate-rpm",
        "--package",
        "wg-collector",
        "--target",
        TARGET,
        "--output",
        "target/dist/",
    ])))
    .context("cargo generate-rpm (cargo xtask setup installs it)")?;
    let rpm = PathBuf::from(format!("target/dist/wg-collector-{}-1.x86_64.rpm", env!("CARGO_PKG_VERSION")));
    let listing =
        output(Command::new("rpm").args(["-qp", "--queryformat", "[%{FILEMODES:perms} %{FILENAMES}\\n]"]).arg(&rpm))?;
    let files: Vec<(String, String)> =
        listing.lines().filter_map(|l| l.split_once(' ').map(|(m, p)| (m.to_string(), p.to_string()))).collect();
    same_files("rpm -qlp", &rpm, &files, RPM_FILES)?;
    let config = output(Command::new("rpm").arg("-qpc").arg(&rpm))?;
    if config.trim() != "/etc/sysconfig/wg-collector" {
        bail!("{} has config files {config:?}; only /etc/sysconfig/wg-collector is one", rpm.display());
    }
    let packed = output(Command::new("sh").arg("-c").arg(format!(
        "rpm2cpio '{}' | cpio -i --quiet --to-stdout ./usr/bin/wg-collector | sha256sum",
        rpm.display()
    )))?;
    same_binary(&rpm, &packed, binary)?;
    Ok(rpm)
}

/// Packages dated by the commit, not the clock: two builds of one commit are the same file.
fn reproducible(c: &mut Command) -> &mut Command {
    if let Some(t) = crate::commit_time() {
        c.env("SOURCE_DATE_EPOCH", t);
    }
    c
}

fn same_files(tool: &str, package: &Path, found: &[(String, String)], want: &[(&str, &str)]) -> Result<()> {
    let mut found: Vec<(&str, &str)> = found.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
    found.sort_by_key(|&(_, p)| p);
    if found != want {
        bail!("{tool} {} lists\n{found:#?}\nwhere it should list exactly\n{want:#?}", package.display());
    }
    Ok(())
}

fn same_binary(package: &Path, packed_sum: &str, binary: &Path) -> Result<()> {
    let built = output(Command::new("sha256sum").arg(binary))?;
    let sum = |s: &str| s.split_whitespace().next().unwrap_or("").to_string();
    if sum(packed_sum) != sum(&built) || sum(&built).is_empty() {
        bail!(
            "the binary in {} is not {} (sha256 {} vs {})",
            package.display(),
            binary.display(),
            sum(packed_sum),
            sum(&built)
        );
    }
    Ok(())
}
