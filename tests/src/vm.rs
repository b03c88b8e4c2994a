//! The verdict the kernel-WireGuard suite gives from inside its qemu guest, as both sides
//! know it: the guest writes a value to qemu's isa-debug-exit port, qemu exits with
//! `value << 1 | 1`, and the guest prints a summary line. Status 1 (value 0) is no pass:
//! qemu itself exits 1 when it cannot start (a kernel or initrd it cannot load, a bad
//! option), so a VM that never booted would read as a pass.

/// The value the guest writes when every check passed: qemu exits 33, which it never
/// returns by itself.
pub const PASS: u8 = 0x10;
/// The value the guest writes when a check failed (qemu exits 35).
pub const FAIL: u8 = 0x11;
/// Checks in the suite; the guest's summary must count exactly these.
pub const CHECKS: usize = 6;

/// qemu's exit status for a value written to the debug-exit port.
pub const fn qemu_status(value: u8) -> i32 {
    ((value as i32) << 1) | 1
}

/// The guest's summary line for a run with no failure.
pub fn passing_summary() -> String {
    format!("vm-suite: {CHECKS} passed, 0 failed")
}

/// Ok only for qemu's pass status together with the guest's summary of every check passed.
pub fn verdict(status: Option<i32>, console: &str, qemu_stderr: &str) -> Result<(), String> {
    let summary = passing_summary();
    let summarized = console.lines().any(|l| l.trim_end() == summary);
    if status == Some(qemu_status(PASS)) && summarized {
        return Ok(());
    }
    Err(format!(
        "the kernel-WireGuard suite did not pass: qemu status {status:?} (pass: {}), guest summary {}{}",
        qemu_status(PASS),
        if summarized { "as expected" } else { "missing or not all passed" },
        if qemu_stderr.trim().is_empty() { String::new() } else { format!("; qemu said: {}", qemu_stderr.trim()) }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pass_status_with_the_full_summary_passes() {
        let good = format!("boot...\n{}\n", passing_summary());
        assert_eq!(verdict(Some(33), &good, ""), Ok(()));
        // What qemu returns when it cannot start, and what the old pass value gave.
        assert!(verdict(Some(1), &good, "qemu: could not load kernel").unwrap_err().contains("could not load kernel"));
        assert!(verdict(Some(33), "vm-suite: 5 passed, 0 failed\n", "").is_err(), "a check missing");
        assert!(verdict(Some(33), "vm-suite: 6 passed, 1 failed\n", "").is_err());
        assert!(verdict(Some(35), &good, "").is_err());
        assert!(verdict(None, &good, "").is_err(), "killed by the timeout");
        assert!(verdict(Some(0), &good, "").is_err(), "a panic or poweroff exits 0");
    }
}
