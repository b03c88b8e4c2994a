//! `cargo xtask fuzz`: runs the cargo-fuzz targets of fuzz/ (everything the collector parses
//! from outside) one after the other, each for `seconds`, from the checked-in seeds plus the
//! corpus earlier runs grew. A crash fails the task; libFuzzer leaves the input in
//! fuzz/artifacts/<target>/ (add it to fuzz/seeds/<target>/ once fixed, so it stays fixed).
//! The full run writes fuzz/RESULTS.md.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

pub const TARGETS: [&str; 5] = ["uapi", "netlink", "names", "web_config", "kernel"];

/// What one target's run did.
pub struct Outcome {
    pub target: &'static str,
    pub seconds: f64,
    pub runs: u64,
    pub crashed: bool,
}

impl Outcome {
    /// A crash, or a run that executed no input at all (a target that does not start, a
    /// corpus that cannot be read): either way nothing was shown.
    pub fn failed(&self) -> bool {
        self.crashed || self.runs == 0
    }
}

/// cargo-fuzz with the flags libFuzzer's instrumentation needs: -Z flags of Debian's stable
/// rustc, allowed by RUSTC_BOOTSTRAP (as the eBPF build does, ../shared/docs/toolchain.md).
fn cargo_fuzz() -> Command {
    let mut c = Command::new(crate::cargo_bin());
    c.arg("fuzz").current_dir(crate::workspace_root().join("fuzz")).env("RUSTC_BOOTSTRAP", "1");
    c
}

/// How the targets are built: optimized for a real search; unoptimized for CI's smoke run,
/// which only shows that every target still builds and runs its seeds (the build takes
/// ~3 minutes instead of ~4.5 in a clean clone; a target then runs ~30× fewer inputs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Release,
    Dev,
}

impl Build {
    fn flag(self) -> &'static str {
        match self {
            Build::Release => "--release",
            Build::Dev => "--dev",
        }
    }
}

/// Runs `targets` (all of [`TARGETS`] when empty) for `seconds` each.
pub fn run(seconds: u64, targets: &[String], build: Build) -> Result<Vec<Outcome>> {
    if let Some(t) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("no fuzz target {t} (there are {})", TARGETS.join(", "));
    }
    let status =
        cargo_fuzz().args(["build", build.flag()]).status().context("cargo fuzz (cargo xtask setup installs it)")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    let mut out = Vec::new();
    for target in TARGETS.into_iter().filter(|t| targets.is_empty() || targets.iter().any(|x| x == t)) {
        let corpus = format!("corpus/{target}");
        std::fs::create_dir_all(crate::workspace_root().join("fuzz").join(&corpus))?;
        let t0 = Instant::now();
        let run = cargo_fuzz()
            .args(["run", build.flag(), target, &corpus, &format!("seeds/{target}"), "--"])
            .args([format!("-max_total_time={seconds}"), "-print_final_stats=1".into(), "-timeout=10".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&run.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let crashed = !run.status.success();
        if crashed {
            eprintln!("fuzz target {target} crashed:\n{}", tail(&log, 40));
        }
        println!(
            "fuzz {target}: {runs} runs in {:.0} s, {}",
            t0.elapsed().as_secs_f64(),
            if crashed {
                "CRASHED"
            } else if runs == 0 {
                "RAN NO INPUT"
            } else {
                "no crash"
            }
        );
        out.push(Outcome { target, seconds: t0.elapsed().as_secs_f64(), runs, crashed });
    }
    Ok(out)
}

/// fuzz/RESULTS.md after a run: a row per target, those of this run new (with their date),
/// the others as `previous` (the file as it was) had them.
pub fn table(outcomes: &[Outcome], previous: &str) -> String {
    let mut s = format!(
        "# Fuzzing\n\nEach row from `cargo xtask fuzz --seconds SECONDS [--target NAME]` on {}, cargo-fuzz with libFuzzer and AddressSanitizer.\n\n| target | what it parses | run on | seconds | runs | crashes |\n|---|---|---|---:|---:|---:|\n",
        crate::bench::machine()
    );
    let today = crate::bench::sh("date", &["-u", "+%Y-%m-%d"]);
    for target in TARGETS {
        let what = match target {
            "uapi" => "a userspace WireGuard's UAPI `get=1` answer",
            "netlink" => "kernel WireGuard's generic netlink datagrams, folded into a device",
            "names" => "names files and wg-quick configurations (friendly_name)",
            "kernel" => "packets for the four TC programs, through the loaded programs (BPF_PROG_TEST_RUN) and the reference model (tests/model): every map compared after every packet, a difference counted as a crash",
            _ => "the exporter-toolkit web configuration and --web.listen-address",
        };
        let row = match outcomes.iter().find(|o| o.target == target) {
            Some(o) => format!("| {target} | {what} | {today} | {:.0} | {} | {} |", o.seconds, o.runs, o.crashed as u8),
            None => previous
                .lines()
                .find(|l| l.starts_with(&format!("| {target} |")) && l.matches(" | ").count() == 5)
                .map(String::from)
                .unwrap_or_else(|| format!("| {target} | {what} | never | - | - | - |")),
        };
        s += &row;
        s += "\n";
    }
    s += "\nCrashes found and fixed (their inputs are seeds now, so every run replays them): a names file with multi-byte characters before the key (the parser split the line at byte 44, inside a character); a netlink error message with code i32::MIN (netlink-packet-core's `ErrorMessage::to_io` overflows on it; the collector no longer calls it); an allowed IP whose CIDR mask attribute is empty (netlink-packet-wireguard 0.5.0, the latest, indexes its first byte unchecked; the collector has since read dumps with its own decoder, which refuses it as an error of that reading: `regress-empty-cidr-mask`).\n\nDifferences the `kernel` target found between the programs and the reference model (tests/model), each fixed in the programs and kept as a regression test in tests/model/tests/differential.rs: TCP options that the header claims but the packet does not hold (cut short) were walked over the zeros of the stack buffer, so a half-read timestamp was recorded as a question; a frame whose EtherType says IPv6 but whose version nibble is not 6, or IPv4 with an IHL below 5 (on the helper path), was parsed as a UDP datagram and counted as an invalid message. A timeout of the `kernel` target was the model's own: a transport counter a billion past the last made it walk every counter between (`regress-counter-jump`); it counts them now.\n";
    s
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{table, Outcome};

    #[test]
    fn a_run_of_some_targets_keeps_the_other_rows() {
        let before = "| uapi | x | 2026-01-01 | 600 | 5 | 0 |\n| names | y | 2026-01-01 | 600 | 7 | 0 |\n";
        let now = table(&[Outcome { target: "names", seconds: 601.0, runs: 9, crashed: false }], before);
        assert!(now.contains("| uapi | x | 2026-01-01 | 600 | 5 | 0 |"), "{now}");
        assert!(now.lines().any(|l| l.starts_with("| names |") && l.ends_with("| 601 | 9 | 0 |")), "{now}");
        assert!(now.contains("| kernel |") && now.lines().any(|l| l.starts_with("| kernel |") && l.contains("never")));
    }

    #[test]
    fn a_target_that_ran_no_input_fails() {
        let o = |runs, crashed| Outcome { target: "uapi", seconds: 5.0, runs, crashed };
        assert!(!o(1000, false).failed());
        assert!(o(1000, true).failed());
        assert!(o(0, false).failed(), "0 inputs passed before");
    }
}
