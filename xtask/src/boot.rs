//! `cargo xtask vmtest --boot`: the .deb as an operator installs it. A Debian 13 root made by
//! mmdebstrap from Debian's archive (essential packages, systemd, iproute2, wireguard-tools,
//! ping, kmod, bpftool) boots with systemd as PID 1 on Debian 13's cloud kernel in qemu (TCG),
//! from an initramfs. A oneshot-free unit starts the suite (tests/src/bin/boot-suite.rs),
//! which installs the .deb with dpkg, brings up a kernel wg0 with wg-quick and drives the
//! shipped, unmodified unit with systemctl.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};
use wg_tests::vm::BOOT;

use crate::{
    kernels::{self, Kernel},
    sh,
    vm::{install_modules, WORK},
};

/// What the root holds beyond Debian's essential packages.
/// procps is what the .deb depends on (dpkg -i installs no dependency).
const PACKAGES: &str = "systemd,systemd-sysv,procps,iproute2,wireguard-tools,iputils-ping,kmod,bpftool";

/// The unit that runs the suite once systemd is up; its output goes to the console.
const SUITE_UNIT: &str = "[Unit]
Description=wg-collector boot suite
After=basic.target

[Service]
Type=simple
ExecStart=/usr/local/bin/boot-suite
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
Environment=WG_COLOR_MODE=never RUST_BACKTRACE=0

[Install]
WantedBy=multi-user.target
";

pub fn run(deb: &Path) -> Result<()> {
    let t0 = Instant::now();
    crate::cargo(&["build", "--release", "--package", "wg-tests", "--bin", "boot-suite"])?;
    let (kernel_dir, version) = kernels::fetch(Kernel::V6_12)?;
    let root = debian_root(Kernel::V6_12.release())?;
    install_modules(&kernel_dir, &version, &root)?;
    let suite = root.join("usr/local/bin/boot-suite");
    std::fs::create_dir_all(suite.parent().unwrap())?;
    // Built on Debian 12: its glibc is older than Debian 13's, so it runs there as it is.
    std::fs::copy("target/release/boot-suite", &suite)?;
    std::fs::copy(deb, root.join("root/wg-collector.deb"))?;
    let units = root.join("etc/systemd/system");
    std::fs::write(units.join("wg-boot-suite.service"), SUITE_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    symlink("/etc/systemd/system/wg-boot-suite.service", &wants.join("wg-boot-suite.service"))?;
    // No login prompt on the console the suite writes to.
    symlink("/dev/null", &units.join("serial-getty@ttyS0.service"))?;
    symlink("/dev/null", &units.join("getty@tty1.service"))?;
    std::fs::write(root.join("etc/hostname"), "wg-boot\n")?;
    let initrd = Path::new(WORK).join("boot-initramfs.cpio");
    let out = std::env::current_dir()?.join(&initrd);
    // Uncompressed: the kernel unpacks it at memory speed, where gzip costs seconds under TCG.
    sh(Command::new("sh")
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet > '{}'", out.display()))
        .current_dir(&root))?;
    println!(
        "vmtest --boot: Debian 13 on {version}, {:.0} MiB initramfs, prepared in {:.1} s",
        std::fs::metadata(&initrd)?.len() as f64 / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    crate::vm::boot(
        &kernel_dir.join(format!("boot/vmlinuz-{version}")),
        &initrd,
        BOOT,
        "2G",
        "rdinit=/lib/systemd/systemd systemd.show_status=error quiet",
    )
    .map(drop)
}

/// The Debian root for `release`, made once (mmdebstrap) and kept in target/vm; a root made
/// from another package list is made again.
fn debian_root(release: &str) -> Result<PathBuf> {
    let root = Path::new(WORK).join(format!("root-{release}"));
    let stamp = Path::new(WORK).join(format!("root-{release}.packages"));
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(PACKAGES) || !root.join("usr/bin/dpkg").exists() {
        let _ = std::fs::remove_dir_all(&root);
        let t = Instant::now();
        sh(Command::new("mmdebstrap")
            .args(["--quiet", "--variant=essential", &format!("--include={PACKAGES}")])
            .args(["--aptopt=APT::Install-Recommends \"false\""])
            .args(["--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/locale/*"])
            .arg(release)
            .arg(&root)
            .arg("http://deb.debian.org/debian"))
        .context("mmdebstrap (cargo xtask setup installs it)")?;
        // The exclusions were for Debian's own packages: ours installs whole.
        std::fs::remove_file(root.join("etc/dpkg/dpkg.cfg.d/99mmdebstrap"))?;
        std::fs::write(&stamp, PACKAGES)?;
        println!("vmtest --boot: made the Debian {release} root in {:.0} s", t.elapsed().as_secs_f64());
    }
    // What a previous run added goes; the suite's files are written again.
    let _ = std::fs::remove_file(root.join("root/wg-collector.deb"));
    Ok(root)
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).with_context(|| format!("linking {}", link.display()))
}
