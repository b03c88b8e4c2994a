//! `cargo xtask dist`: the release binary for any x86_64 Linux, statically linked (glibc's
//! static libraries, `+crt-static`; the eBPF object is embedded already), in target/dist/.
//! Checked: ldd finds no shared library, and `--version` runs and names the commit.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds and checks the binary; returns its path.
pub fn run() -> Result<PathBuf> {
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

fn output(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}
