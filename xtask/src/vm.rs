//! `cargo xtask vmtest`: kernel WireGuard, which this machine's kernel lacks, in a qemu
//! guest under software emulation (../shared/docs/kernel-vm.md). Debian's cloud kernel comes
//! through apt (nothing else is downloaded); a small initramfs carries busybox, the kernel
//! modules WireGuard and TC need, the collector, the suite (tests/src/bin/vm-suite.rs) and
//! the tools the lab uses with their libraries. The guest reports its verdict through qemu's
//! isa-debug-exit port: only a suite that wrote 0 there passes (a panic or a plain power-off
//! exits qemu with 0, which fails).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use wg_tests::vm::{Suite, KERNEL, REFUSED, SCALE};

use crate::{
    kernels::{self, Kernel},
    output, sh,
};

pub const WORK: &str = "target/vm";
/// The modules the guests load; what they depend on comes from the kernel's modules.dep.
pub const MODULES: &[&str] = &["wireguard", "veth", "sch_ingress", "cls_bpf"];
/// The kernels `cargo xtask test` (CI) runs the suite on: all three (~45 s each): 5.10 for
/// the refusal, 6.1 the oldest that runs the programs, 6.12 Debian 13's.
pub const CI_KERNELS: &[Kernel] = &Kernel::ALL;
/// Host tools the lab runs in the guest (with their shared libraries).
const TOOLS: &[&str] = &["/usr/sbin/ip", "/usr/bin/wg", "/usr/bin/ping", "/usr/sbin/tc"];

/// Runs the kernel-WireGuard suite on each kernel; every one is booted even when an earlier
/// one failed, and a line per kernel says how it went.
pub fn run(kernels: &[Kernel]) -> Result<()> {
    crate::cargo(&["build", "--release", "--package", "wg-collector", "--bin", "wg-collector"])?;
    crate::cargo(&["build", "--release", "--package", "wg-tests", "--bin", "vm-suite"])?;
    std::fs::create_dir_all(WORK)?;
    let mut rows = Vec::new();
    for &k in kernels {
        let t0 = Instant::now();
        let outcome = (|| {
            let (kernel_dir, version) = kernels::fetch(k)?;
            let initrd = initramfs(&kernel_dir, &version, "vm-suite", &[])?;
            println!("vmtest: booting {version} under qemu (TCG); prepared in {:.1} s", t0.elapsed().as_secs_f64());
            let suite = if k.runs_programs() { KERNEL } else { REFUSED };
            boot(&kernel_dir.join(format!("boot/vmlinuz-{version}")), &initrd, suite, "2G", "quiet")
        })();
        if let Err(e) = &outcome {
            eprintln!("vmtest {}: {e:#}", k.label());
        }
        rows.push((k, outcome, t0.elapsed()));
    }
    println!("\nvmtest: what works, by kernel (each cell from the suite's check of that name):");
    println!("| kernel | suite | counting, latency | attach | pinning | bpf stats |");
    println!("|---|---|---|---|---|---|");
    for (k, outcome, took) in &rows {
        let cell = |f: &str| outcome.as_ref().ok().and_then(|lines| feature(lines, f)).unwrap_or("-".into());
        let verdict = match outcome {
            Ok(_) if k.runs_programs() => "passed".to_string(),
            Ok(_) => "refused at start (needs 5.12)".to_string(),
            Err(_) => "FAILED".to_string(),
        };
        let counting = if k.runs_programs() && outcome.is_ok() { "yes" } else { "-" };
        println!(
            "| {} | {verdict} ({:.0} s) | {counting} | {} | {} | {} |",
            k.label(),
            took.as_secs_f64(),
            cell("attach"),
            cell("pinning"),
            cell("bpf stats")
        );
    }
    if rows.iter().any(|(_, o, _)| o.is_err()) {
        bail!("the kernel-WireGuard suite failed on a kernel (above)");
    }
    Ok(())
}

/// Kernel WireGuard's state at scale (tests/src/bin/vm-scale.rs) on Debian 13's kernel:
/// the collector's scrape, prometheus_wireguard_exporter's and `wg show dump`'s, side by
/// side in one guest. Returns the Markdown table.
/// `peers`: the sizes to grow the device to, instead of the defaults (the exporter then only
/// up to 1,000).
pub fn scale(quick: bool, peers: Option<&str>, profile: bool) -> Result<String> {
    // The guest runs target/release's collector: built here, or a stale one would be measured.
    crate::cargo(&["build", "--release", "--package", "wg-collector", "--bin", "wg-collector"])?;
    crate::cargo(&["build", "--release", "--package", "wg-tests", "--bin", "vm-scale"])?;
    let exporter = PathBuf::from(wg_tests::lab::tool("prometheus_wireguard_exporter")?);
    let (kernel_dir, version) = kernels::fetch(Kernel::V6_12)?;
    let mut extra = vec![exporter];
    if profile {
        extra.push(perf()?);
    }
    let initrd = initramfs(&kernel_dir, &version, "vm-scale", &extra)?;
    let (sizes, reps) = if quick { ("100,1000", 1) } else { ("1000,10000,50000", 9) };
    // The exporter takes minutes a scrape at 10,000 peers; picked sizes are for the collector.
    let exporter = if quick || peers.is_some() { 1000 } else { 10_000 };
    let mut params =
        format!("wgscale.peers={} wgscale.reps={reps} wgscale.exporter={exporter}", peers.unwrap_or(sizes));
    if profile {
        params.push_str(" wgscale.profile=1");
    }
    let console =
        boot(&kernel_dir.join(format!("boot/vmlinuz-{version}")), &initrd, SCALE, "4G", &format!("quiet {params}"))?;
    let mut table = format!(
        "Kernel {version} in qemu (TCG: absolute times are slow, ratios stand).\n\n\
         | peers | collector scrape (median) | prometheus_wireguard_exporter | `wg show dump` | collector / dump (median of rounds) | exporter / dump | page | dump | collector: netlink | maps | until headers | collector, gzip (as Prometheus asks) | gzip / dump | gzip page | collector, zstd (Prometheus' zstd-scrape) | zstd / dump | zstd page |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for line in console.lines() {
        let Some(row) = line.split_once("vm-scale: row ").map(|(_, r)| r) else { continue };
        let f: Vec<&str> = row.split_whitespace().collect();
        let [n, collector, exporter, dump, page, dumped, netlink, maps, headers, ratio, gzip, gzip_page, gzip_ratio, zstd, zstd_page, zstd_ratio] =
            f[..]
        else {
            bail!("a row of vm-scale: {row}")
        };
        let (c, d, ratio): (f64, f64, f64) = (collector.parse()?, dump.parse()?, ratio.parse()?);
        let (e, e_ratio) = match exporter.parse::<f64>() {
            Ok(e) => (format!("{:.1} ms", e * 1e3), format!("{:.1}×", e / d)),
            Err(_) => ("not measured (minutes a scrape)".into(), String::new()),
        };
        let kib = |b: &str| b.parse::<f64>().map(|b| format!("{:.0} KiB", b / 1024.0));
        let ms = |s: &str| s.parse::<f64>().map(|s| format!("{:.1} ms", s * 1e3));
        table.push_str(&format!(
            "| {n} | {:.1} ms | {e} | {:.1} ms | {:.1}× | {e_ratio} | {} | {} | {} | {} | {} | {} | {:.1}× | {} | {} | {:.1}× | {} |\n",
            c * 1e3,
            d * 1e3,
            ratio,
            kib(page)?,
            kib(dumped)?,
            ms(netlink)?,
            ms(maps)?,
            ms(headers)?,
            ms(gzip)?,
            gzip_ratio.parse::<f64>()?,
            kib(gzip_page)?,
            ms(zstd)?,
            zstd_ratio.parse::<f64>()?,
            kib(zstd_page)?
        ));
    }
    Ok(table)
}

/// The value of a "vm-suite: feature NAME: VALUE" line of the guest's console.
fn feature(console: &str, name: &str) -> Option<String> {
    let tag = format!("vm-suite: feature {name}: ");
    console.lines().find_map(|l| l.split_once(&tag).map(|(_, v)| v.trim().to_string()))
}

/// The perf executable itself (linux-perf's /usr/bin/perf is a script that runs
/// perf_VERSION for the running kernel), for the guest's /usr/bin/perf.
fn perf() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/bin")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == "perf" || n.starts_with("perf_")))
        .filter(|p| std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x7fELF")))
        .collect();
    found.sort();
    let perf = found.pop().context("no perf executable in /usr/bin: apt-get install linux-perf")?;
    // The guest runs /usr/bin/perf: a copy under that name.
    let named = Path::new(WORK).join("perf");
    std::fs::create_dir_all(WORK)?;
    copy(&perf, &named)?;
    Ok(named)
}

/// Boots the guest and judges the suite's verdict (see wg_tests::vm): qemu's pass status
/// and the guest's summary of every check passed; qemu's own complaints are shown on failure.
/// Returns the guest's console.
pub fn boot(vmlinuz: &Path, initrd: &Path, suite: Suite, memory: &str, append: &str) -> Result<String> {
    let t1 = Instant::now();
    let out = Command::new("timeout")
        // One emulation thread for both vCPUs: with multi-threaded TCG, Debian 13's kernel
        // once died at boot on an int3 in code being patched (text_poke) on the other vCPU.
        .args(["900", "qemu-system-x86_64", "-accel", "tcg,thread=single", "-cpu", "max", "-m", memory, "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("console=ttyS0 panic=-1 {append}")])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .output()
        .context("running qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("guest: {}", line.trim_end());
    }
    let code = out.status.code();
    println!("vmtest: guest ran {:.1} s; qemu exit status {code:?}", t1.elapsed().as_secs_f64());
    suite.verdict(code, &text, &String::from_utf8_lossy(&out.stderr)).map_err(anyhow::Error::msg)?;
    Ok(text.into_owned())
}

/// Copies [`MODULES`] and what they need (modules.dep) from the extracted kernel package into
/// `root`'s module folder, decompressed (busybox modprobe reads no .xz), and runs depmod there.
pub fn install_modules(kernel: &Path, version: &str, root: &Path) -> Result<()> {
    let base = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|b| kernel.join(b).join(version))
        .find(|d| d.join("modules.dep").exists())
        .with_context(|| format!("no modules.dep for {version} in {}", kernel.display()))?;
    let dep = std::fs::read_to_string(base.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(base.join("modules.builtin")).unwrap_or_default();
    let mut by_name = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, deps)) = line.split_once(':') else { continue };
        by_name.insert(
            module_name(path),
            (path.to_string(), deps.split_whitespace().map(str::to_string).collect::<Vec<_>>()),
        );
    }
    let mut wanted: Vec<String> = Vec::new();
    for m in MODULES {
        if by_name.contains_key(*m) {
            wanted.push(m.to_string());
        } else if !builtin.lines().any(|l| module_name(l) == *m) {
            bail!("{version} has no module {m}, built in or loadable");
        }
    }
    let mut paths = BTreeSet::new();
    while let Some(m) = wanted.pop() {
        let (path, deps) =
            by_name.get(&m).with_context(|| format!("modules.dep of {version} names {m} but not its file"))?;
        if paths.insert(path.clone()) {
            wanted.extend(deps.iter().map(|d| module_name(d)));
        }
    }
    let dest_base = root.join("lib/modules").join(version);
    for rel in &paths {
        let from = base.join(rel);
        let to = dest_base.join(rel.trim_end_matches(".xz").trim_end_matches(".zst"));
        std::fs::create_dir_all(to.parent().unwrap())?;
        if rel.ends_with(".xz") {
            // Bytes, not text: a lossy UTF-8 conversion would corrupt the module.
            let xz = Command::new("xz").arg("-dc").arg(&from).output()?;
            if !xz.status.success() {
                bail!("xz -dc {} failed: {}", from.display(), String::from_utf8_lossy(&xz.stderr));
            }
            std::fs::write(&to, xz.stdout)?;
        } else {
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    for f in ["modules.builtin", "modules.builtin.modinfo", "modules.order"] {
        let _ = std::fs::copy(base.join(f), dest_base.join(f));
    }
    sh(Command::new("depmod").arg("-b").arg(root).arg(version))?;
    println!("vmtest: {} modules for {version} ({})", paths.len(), MODULES.join(", "));
    Ok(())
}

/// "kernel/net/wireguard/wireguard.ko.xz" -> "wireguard"; modprobe treats - and _ alike.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Builds the guest's root file system and packs it (gzip'd newc cpio): init runs `suite`
/// (a binary of tests/src/bin); `extra` executables go to /usr/bin.
fn initramfs(kernel: &Path, version: &str, suite: &str, extra: &[PathBuf]) -> Result<PathBuf> {
    let root = Path::new(WORK).join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "var"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"))
        .context("busybox-static (cargo xtask setup installs it)")?;
    let release = Path::new("target/release");
    for (from, to) in [(release.join("wg-collector"), "bin/wg-collector"), (release.join(suite), "bin/vm-suite")] {
        with_libraries(&from, &root.join(to), &root)?;
    }
    for tool in TOOLS {
        with_libraries(Path::new(tool), &root.join(tool.trim_start_matches('/')), &root)?;
    }
    for bin in extra {
        let name = bin.file_name().context("an executable's name")?;
        with_libraries(bin, &root.join("usr/bin").join(name), &root)?;
    }
    install_modules(kernel, version, &root)?;
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

/// The guest's init: mounts, modules, then the suite (whichever [`initramfs`] put at
/// /bin/vm-suite); a power-off if the suite never reported.
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

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM that cannot boot is no pass: qemu exits 1 for a kernel it cannot load, which the
    /// old verdict took for the guest's pass.
    #[test]
    fn a_vm_that_cannot_boot_fails() {
        let err = boot(Path::new("/nonexistent/vmlinuz"), Path::new("/nonexistent/initrd"), KERNEL, "1G", "quiet")
            .unwrap_err()
            .to_string();
        assert!(err.contains("qemu status Some(1)"), "{err}");
        assert!(err.contains("qemu said:") && err.contains("/nonexistent/vmlinuz"), "{err}");
    }
}
