//! The suites that run inside qemu guests (`cargo xtask vmtest`) and the verdict both sides
//! know: the guest runs its checks, prints a summary line and writes a value to qemu's
//! isa-debug-exit port; qemu exits with `value << 1 | 1`. Status 1 (value 0) is no pass:
//! qemu itself exits 1 when it cannot start (a kernel or initrd it cannot load, a bad
//! option), so a VM that never booted would read as a pass.

use std::time::Instant;

/// The value the guest writes when every check passed: qemu exits 33, which it never
/// returns by itself.
pub const PASS: u8 = 0x10;
/// The value the guest writes when a check failed (qemu exits 35).
pub const FAIL: u8 = 0x11;

/// A suite run in a guest: its name (the prefix of its console lines) and how many checks
/// it has; the host requires a summary counting exactly these.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    pub name: &'static str,
    pub checks: usize,
}

/// Kernel WireGuard under our own init (tests/src/bin/vm-suite.rs).
pub const KERNEL: Suite = Suite { name: "vm-suite", checks: 11 };
/// On kernels the programs cannot run on (before 5.12): the collector's refusal.
pub const REFUSED: Suite = Suite { name: "vm-refusal", checks: 1 };
/// Kernel WireGuard's state at scale, for `cargo xtask bench` (tests/src/bin/vm-scale.rs).
pub const SCALE: Suite = Suite { name: "vm-scale", checks: 1 };
/// The .deb and its unit under systemd on Debian 13 (tests/src/bin/boot-suite.rs).
pub const BOOT: Suite = Suite { name: "boot-suite", checks: 8 };

/// A named check of a suite.
pub type Check = (&'static str, fn() -> anyhow::Result<()>);

/// Whether the running kernel is older than `major.minor` (from /proc/sys/kernel/osrelease).
pub fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(a), Some(b)) if (a, b) < (major, minor))
}

/// qemu's exit status for a value written to the debug-exit port.
pub const fn qemu_status(value: u8) -> i32 {
    ((value as i32) << 1) | 1
}

impl Suite {
    /// The guest's summary line for a run with no failure.
    pub fn passing_summary(self) -> String {
        format!("{}: {} passed, 0 failed", self.name, self.checks)
    }

    /// Guest side: runs the checks in order, prints each outcome and the summary, and ends
    /// qemu with the verdict.
    pub fn run(self, checks: &[Check]) -> ! {
        assert_eq!(checks.len(), self.checks, "{} declares {} checks", self.name, self.checks);
        let (mut passed, mut failed) = (0, 0);
        for (name, check) in checks {
            let t0 = Instant::now();
            match check() {
                Ok(()) => {
                    passed += 1;
                    println!("{}: ok   {name} ({:.1} s)", self.name, t0.elapsed().as_secs_f64());
                }
                Err(e) => {
                    failed += 1;
                    println!("{}: FAIL {name}: {e:#}", self.name);
                }
            }
        }
        println!("{}: {passed} passed, {failed} failed", self.name);
        exit_qemu(if failed == 0 { PASS } else { FAIL })
    }

    /// Host side: Ok only for qemu's pass status together with the guest's summary of every
    /// check passed.
    pub fn verdict(self, status: Option<i32>, console: &str, qemu_stderr: &str) -> Result<(), String> {
        let summary = self.passing_summary();
        let summarized =
            console.lines().map(str::trim_end).any(|l| l == summary || l.ends_with(&format!(" {summary}")));
        if status == Some(qemu_status(PASS)) && summarized {
            return Ok(());
        }
        Err(format!(
            "{} did not pass: qemu status {status:?} (pass: {}), guest summary {}{}",
            self.name,
            qemu_status(PASS),
            if summarized { "as expected" } else { "missing or not all passed" },
            if qemu_stderr.trim().is_empty() { String::new() } else { format!("; qemu said: {}", qemu_stderr.trim()) }
        ))
    }
}

/// qemu's isa-debug-exit device: writing V to port 0xf4 ends qemu with status 2V+1. The
/// console is drained first: qemu ends at once, and lines still in the serial port's buffer
/// would be lost (seen: a passing run whose summary line never reached the host).
pub fn exit_qemu(v: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: tcdrain on stdout waits until the terminal has sent what was written to it.
    unsafe { libc::tcdrain(1) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: ioperm and an out instruction on the debug-exit port; only in the guest.
    unsafe {
        if libc::ioperm(0xf4, 4, 1) == 0 {
            core::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") v);
        }
    }
    std::process::exit(v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pass_status_with_the_full_summary_passes() {
        let good = format!("boot...\n{}\n", KERNEL.passing_summary());
        assert_eq!(KERNEL.verdict(Some(33), &good, ""), Ok(()));
        // What qemu returns when it cannot start, and what the old pass value gave.
        assert!(KERNEL
            .verdict(Some(1), &good, "qemu: could not load kernel")
            .unwrap_err()
            .contains("could not load kernel"));
        assert!(KERNEL.verdict(Some(33), "vm-suite: 7 passed, 0 failed\n", "").is_err(), "a check missing");
        assert!(KERNEL.verdict(Some(33), "vm-suite: 8 passed, 1 failed\n", "").is_err());
        assert!(KERNEL.verdict(Some(35), &good, "").is_err());
        assert!(KERNEL.verdict(None, &good, "").is_err(), "killed by the timeout");
        assert!(KERNEL.verdict(Some(0), &good, "").is_err(), "a panic or poweroff exits 0");
        // systemd's journal on the console prefixes the suite's lines.
        let journal = format!("[   31.2] boot-suite[210]: {}\n", BOOT.passing_summary());
        assert_eq!(BOOT.verdict(Some(33), &journal, ""), Ok(()));
        assert!(BOOT.verdict(Some(33), &good, "").is_err(), "another suite's summary");
    }
}
