//! `cargo xtask vmtest`: kernel WireGuard, which this machine's kernel lacks, in a qemu
//! guest under software emulation (../shared/docs/kernel-vm.md). Debian's cloud kernel comes
//! through apt (nothing else is downloaded); a small initramfs carries busybox, the kernel
//! modules WireGuard and TC need, the collector, the suite (tests/src/bin/vm-suite.rs) and
//! the tools the lab uses with their libraries. The guest reports its verdict through qemu's
//! isa-debug-exit port: only a suite that wrote 0 there passes (a panic or a plain power-off
//! exits qemu with 0, which fails).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

const WORK: &str = "target/vm";
/// The modules the guest loads, and what WireGuard depends on (resolved by depmod).
const MODULES: &[&str] = &[
    "wireguard",
    "libchacha20poly1305",
    "chacha-x86_64",
    "poly1305-x86_64",
    "ip6_udp_tunnel",
    "udp_tunnel",
    "curve25519-x86_64",
    "libcurve25519-generic",
    "libchacha",
    "veth",
    "sch_ingress",
    "cls_bpf",
];
/// Host tools the lab runs in the guest (with their shared libraries).
const TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/bin/wg", "/usr/bin/ping"];

pub fn run() -> Result<()> {
    let t0 = Instant::now();
    crate::cargo(&["build", "--release", "--package", "wg-collector", "--bin", "wg-collector"])?;
    crate::cargo(&["build", "--release", "--package", "wg-tests", "--bin", "vm-suite"])?;
    std::fs::create_dir_all(WORK)?;
    let (kernel_dir, version) = kernel()?;
    let initrd = initramfs(&kernel_dir, &version)?;
    let vmlinuz = kernel_dir.join(format!("boot/vmlinuz-{version}"));
    println!("vmtest: booting {version} under qemu (TCG); prepared in {:.1} s", t0.elapsed().as_secs_f64());
    boot(&vmlinuz, &initrd)
}

/// Boots the guest and judges its verdict (see wg_tests::vm): qemu's pass status and the
/// guest's summary of every check passed; qemu's own complaints are shown on failure.
fn boot(vmlinuz: &Path, initrd: &Path) -> Result<()> {
    let t1 = Instant::now();
    let out = Command::new("timeout")
        .args([
            "900",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1G",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .output()
        .context("running qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("guest: {}", line.trim_end());
    }
    let code = out.status.code();
    println!("vmtest: guest ran {:.1} s; qemu exit status {code:?}", t1.elapsed().as_secs_f64());
    wg_tests::vm::verdict(code, &text, &String::from_utf8_lossy(&out.stderr)).map_err(anyhow::Error::msg)
}

/// Debian's current cloud kernel, extracted under target/vm (downloaded once).
fn kernel() -> Result<(PathBuf, String)> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let pkg = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
        .context("apt-cache does not name the cloud kernel's image package (run apt-get update)")?
        .to_string();
    let dir = Path::new(WORK).join(&pkg);
    if !dir.join("boot").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        sh(Command::new("apt-get").args(["download", "-q", &pkg]).current_dir(WORK))?;
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
    Ok((dir, version))
}

/// Builds the guest's root file system and packs it (gzip'd newc cpio).
fn initramfs(kernel: &Path, version: &str) -> Result<PathBuf> {
    let root = Path::new(WORK).join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "var"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"))
        .context("busybox-static (cargo xtask setup installs it)")?;
    let release = Path::new("target/release");
    for (from, to) in [(release.join("wg-collector"), "bin/wg-collector"), (release.join("vm-suite"), "bin/vm-suite")] {
        with_libraries(&from, &root.join(to), &root)?;
    }
    for tool in TOOLS {
        with_libraries(Path::new(tool), &root.join(tool.trim_start_matches('/')), &root)?;
    }
    // The modules, where modprobe looks for them, and their dependency list.
    let moddir = kernel.join("lib/modules").join(version);
    let mut found = 0;
    for entry in walk(&moddir)? {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.trim_end_matches(".xz").trim_end_matches(".ko");
        if MODULES.contains(&stem) {
            let rel = entry.strip_prefix(kernel)?;
            let dest = root.join(rel);
            std::fs::create_dir_all(dest.parent().unwrap())?;
            if name.ends_with(".xz") {
                let data = output(Command::new("xz").arg("-dc").arg(&entry))?;
                std::fs::write(dest.with_extension(""), data)?;
            } else {
                std::fs::copy(&entry, &dest)?;
            }
            found += 1;
        }
    }
    if found < MODULES.len() {
        bail!("found {found} of the {} modules the guest needs in {}", MODULES.len(), moddir.display());
    }
    sh(Command::new("depmod").arg("-b").arg(&root).arg(version))?;
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    set_mode(&init, 0o755)?;
    let out = Path::new(WORK).join("initramfs.cpio.gz");
    let root_abs = std::fs::canonicalize(&root)?;
    let out_abs = std::env::current_dir()?.join(&out);
    sh(Command::new("sh")
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet | gzip -1 > '{}'", out_abs.display()))
        .current_dir(root_abs))?;
    Ok(out)
}

/// The guest's init: mounts, modules, then the suite; a power-off if the suite never reported.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /run/wireguard
ln -s /run /var/run
for m in wireguard veth sch_ingress cls_bpf; do modprobe $m || echo "init: modprobe $m failed"; done
ip link set lo up
echo "init: kernel $(uname -r), $(nproc) CPUs"
WG_COLOR_MODE=never WG_COLLECTOR_BIN=/bin/wg-collector RUST_BACKTRACE=0 /bin/vm-suite
echo "init: vm-suite did not report; powering off"
poweroff -f
"#;

/// Copies an executable and the shared libraries `ldd` lists, each to the same path.
fn with_libraries(bin: &Path, dest: &Path, root: &Path) -> Result<()> {
    copy(bin, dest)?;
    let ldd = output(Command::new("ldd").arg(bin)).unwrap_or_default();
    for line in ldd.lines() {
        let path = line.split("=>").nth(1).unwrap_or(line).split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            let d = root.join(path.trim_start_matches('/'));
            if !d.exists() {
                copy(Path::new(path), &d)?;
            }
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to.parent().unwrap())?;
    // Follows symlinks (/usr/sbin/ip is one).
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn output(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn sh(c: &mut Command) -> Result<()> {
    let s = c.status().with_context(|| format!("running {c:?}"))?;
    if !s.success() {
        bail!("{c:?} failed ({s})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM that cannot boot is no pass: qemu exits 1 for a kernel it cannot load, which the
    /// old verdict took for the guest's pass.
    #[test]
    fn a_vm_that_cannot_boot_fails() {
        let err = boot(Path::new("/nonexistent/vmlinuz"), Path::new("/nonexistent/initrd")).unwrap_err().to_string();
        assert!(err.contains("qemu status Some(1)"), "{err}");
        assert!(err.contains("qemu said:") && err.contains("/nonexistent/vmlinuz"), "{err}");
    }
}
