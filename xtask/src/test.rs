//! `cargo test` over the whole workspace, its output passed through and its verdicts
//! added up, so `cargo xtask test` can close on one summary line.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

/// Runs every unit and integration test; returns (passed, failed).
pub fn run() -> Result<(u64, u64)> {
    let mut child = Command::new(crate::cargo_bin())
        .args(["test", "--workspace", "--all-targets", "--no-fail-fast"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = verdict(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        // A build error or a crashed test binary: count it, so the summary cannot read green.
        failed += 1;
    }
    Ok((passed, failed))
}

/// Parses "test result: ok. 11 passed; 0 failed; ...".
fn verdict(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        let before = rest.split(&format!(" {word}")).next()?;
        before.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((num("passed")?, num("failed")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cargo_verdicts() {
        assert_eq!(super::verdict("test result: ok. 11 passed; 0 failed; 0 ignored; 0 measured"), Some((11, 0)));
        assert_eq!(super::verdict("test result: FAILED. 2 passed; 3 failed; 0 ignored"), Some((2, 3)));
        assert_eq!(super::verdict("running 3 tests"), None);
    }
}
