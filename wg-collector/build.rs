//! Builds the kernel programs (wg-ebpf) and puts the object into OUT_DIR, where
//! `src/bpf/mod.rs` embeds it (`object()`).
//!
//! The eBPF crate builds for `bpfel-unknown-none` with Debian's rustc (see
//! wg-ebpf/.cargo/config.toml and ../shared/docs/toolchain.md). Cargo reads that config
//! from the directory it runs in, so the build runs there, with the variables this outer
//! cargo set for us removed so they cannot leak into the BPF build.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.parent().unwrap().join("wg-ebpf");
    for p in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml", "common/src", "common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    // --version names the commit it was built from (a release built outside git: "unknown").
    let git = manifest.parent().unwrap().join(".git");
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    // The branch HEAD names moves with each commit.
    if let Some(branch) = std::fs::read_to_string(git.join("HEAD"))
        .ok()
        .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
    {
        println!("cargo:rerun-if-changed={}", git.join(branch).display());
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=WG_COLLECTOR_COMMIT={commit}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir).args(["build", "--release", "--locked"]);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for wg-ebpf");
    if !status.success() {
        panic!(
            "building the eBPF programs in {} failed; `cargo xtask setup` installs the toolchain \
             (Debian's rustc-web with the BPF std, bpf-linker)",
            ebpf_dir.display()
        );
    }
    let obj = ebpf_dir.join("target/bpfel-unknown-none/release/wg-ebpf");
    std::fs::copy(&obj, out_dir.join("wg-ebpf.o")).unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
}
