//! `cargo xtask dist`: what an operator installs, in target/dist/, each checked as it is
//! made: the release binary for any x86_64 Linux, statically linked (glibc's static
//! libraries, `+crt-static`; the eBPF object is embedded already: ldd must find no shared
//! library, `--version` must name the commit), the .deb and the .rpm around it
//! (package.rs), and the OCI image (image.rs).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::output;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds and checks everything; prints each artifact's size and build time. Returns the
/// .deb (the boot test installs it).
pub fn run() -> Result<PathBuf> {
    let t = Instant::now();
    let binary = binary()?;
    let built = t.elapsed();
    crate::package::docs()?;
    let t = Instant::now();
    let deb = crate::package::deb(&binary)?;
    let deb_time = t.elapsed();
    let t = Instant::now();
    let rpm = crate::package::rpm(&binary)?;
    let rpm_time = t.elapsed();
    let t = Instant::now();
    let image = crate::image::build(&binary)?;
    let image_time = t.elapsed();
    println!("dist: made and checked, in target/dist/:");
    for (what, path, took) in
        [("binary", &binary, built), (".deb", &deb, deb_time), (".rpm", &rpm, rpm_time), ("image", &image, image_time)]
    {
        println!("  {what:7} {:50} {:>6.1} MiB {:>6.1} s", file_name(path), mib(path), took.as_secs_f64());
    }
    Ok(deb)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn mib(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0)
}

/// Builds and checks the static binary; returns its path in target/dist.
fn binary() -> Result<PathBuf> {
    let t0 = Instant::now();
    // With --target, RUSTFLAGS reach only the target's code, not build scripts and proc macros
    // (which must stay dynamic to load); wg-collector's build.rs clears it for the eBPF build.
    let status = Command::new(crate::cargo_bin())
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--package",
            "wg-collector",
            "--bin",
            "wg-collector",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Symbols stripped (10.9 to 9.2 MiB): nothing a user reads; panics still name file and line.
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the static binary failed ({status})");
    }
    let built = PathBuf::from(format!("target/{TARGET}/release/wg-collector"));
    let version = output(Command::new(&built).arg("--version"))?;
    let ldd = Command::new("ldd").arg(&built).output().context("running ldd")?;
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    if !(ldd.contains("statically linked") || ldd.contains("not a dynamic executable")) {
        bail!("{} is not static: ldd says {}", built.display(), ldd.trim());
    }
    if !version.contains("commit ") || !version.contains("eBPF map layout 0x") {
        bail!("--version says {version:?}");
    }
    let dir = PathBuf::from("target/dist");
    std::fs::create_dir_all(&dir)?;
    let name = format!("wg-collector-{}-x86_64-linux", env!("CARGO_PKG_VERSION"));
    let dest = dir.join(&name);
    std::fs::copy(&built, &dest).with_context(|| format!("copying to {}", dest.display()))?;
    let size = std::fs::metadata(&dest)?.len();
    println!(
        "dist: {} ({:.1} MiB, {}; ldd: {}) in {:.0} s",
        dest.display(),
        size as f64 / (1 << 20) as f64,
        version.trim(),
        ldd.trim(),
        t0.elapsed().as_secs_f64()
    );
    Ok(dest)
}
