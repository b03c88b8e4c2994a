//! The habits `cargo xtask test` holds the tree to: rustfmt (rustfmt.toml) on every crate,
//! the kernel programs and the fuzz targets included, and clippy with warnings as errors on
//! the host crates.

use anyhow::Result;

/// Each check by name, and whether it passed.
pub fn run() -> Vec<(&'static str, Result<()>)> {
    vec![
        ("cargo fmt --check (workspace)", crate::cargo(&["fmt", "--all", "--check"])),
        (
            "cargo fmt --check (wg-ebpf)",
            crate::cargo(&["fmt", "--manifest-path", "wg-ebpf/Cargo.toml", "--all", "--check"]),
        ),
        ("cargo fmt --check (fuzz)", crate::cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--check"])),
        ("cargo clippy -D warnings", crate::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])),
    ]
}
