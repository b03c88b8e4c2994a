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
