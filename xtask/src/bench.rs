//! `cargo xtask bench`: builds and runs the benchmarks (tests/bench, release build) and
//! keeps the table in BENCHMARKS.md with the command, the machine and the date.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn run(quick: bool) -> Result<()> {
    crate::cargo(&["build", "--release", "--package", "wg-bench"])?;
    crate::cargo(&["build", "--release", "--package", "wg-collector", "--bin", "wg-collector"])?;
    let mut c = Command::new("target/release/wg-bench");
    if quick {
        c.arg("--quick");
    }
    let out = c.output().context("running wg-bench")?;
    let mut table = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{table}");
    if !out.status.success() {
        bail!("wg-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Kernel WireGuard, which only a qemu guest has here.
    let vm = format!("\n## Kernel WireGuard's state at scale\n\n{}", crate::vm::scale(quick, None, false)?);
    print!("{vm}");
    table.push_str(&vm);
    if quick {
        return Ok(());
    }
    let doc = format!(
        "# Benchmarks\n\n\
         Produced by `cargo xtask bench` on {date}, {machine}.\n\n\
         eBPF costs: BPF_PROG_TEST_RUN, 1,000,000 runs per measurement, median of 7 repetitions with every \
         variant alternating inside each repetition; `ns/packet (net)` subtracts an empty \
         program measured the same way (the test-run loop's own cost). Warm caches: real \
         traffic with many peers misses caches and costs more. The `wg` hooks run on the \
         WireGuard interface (plaintext), the `underlay` hooks on the interface that carries \
         WireGuard's UDP; `other UDP` is what every non-WireGuard packet on the underlay pays. \
         The peers are /32s of one /16, which the host block holds (an array the verifier \
         inlines); one more peer outside it shows the host hash the others would cost. On the \
         underlay the datagram's endpoint has its place in the endpoint table (an inlined array \
         lookup); the row marked `the hash` is an endpoint that shares its place with another.\n\n\
         Scrape at scale: a wireguard-go device with that many peers (one `wg addconf`), the \
         release collector and prometheus_wireguard_exporter (`cargo install \
         prometheus_wireguard_exporter`) in the same namespace, scraped alternately over \
         loopback, 7 times each after a warm-up (the collector with its defaults: a new reading \
         at every scrape, a poll every second; plain text, gzip as Prometheus asks by default, \
         zstd as it asks with `--enable-feature=zstd-scrape`); RSS of \
         the collector after the scrapes (file pages included: its binary, and the pending \
         and endpoint tables, 5.6 MiB at the default sizes, which the kernel holds anyway and \
         the collector maps to walk and write them). Then the collector restarted with `--scrape.max-age 1` \
         (scrapes share the poll loop's readings) and scraped 7 times more.\n\n\
         Text vs protobuf: the release collector on a wireguard-go device with that many \
         peers, every peer with 4 latency histograms of 6 populated buckets, written into the \
         device's pinned histogram map (that many peers answering pings cannot run here); \
         scraped 7 times after a warm-up, text and protobuf (as Prometheus asks with native \
         histograms: native at schema 3 and the classic buckets) alternating, plain and gzip.\n\n\
         Kernel speed: a TUN device in L3 mode (this kernel has no ipip or gre; TC sees it \
         as it sees WireGuard's interface) in a namespace, nobody reading it; a sendmmsg \
         blaster pinned to CPU 1 sends 64-byte UDP datagrams round-robin to that many /32s \
         routed into it, each a peer's allowed IP in the maps, 3 s per measurement; no \
         programs, an empty program (the hook's own cost), counting, everything on, \
         alternating, medians of 5; then the same with bpf stats on for the time inside the \
         egress program, net of the empty one's (medians of 3).\n\n\
         Per wire packet: the lab's wireguard-go tunnel; device a has that many peers (b and \
         idle others) and b that many /32 allowed IPs; the kernel-speed blaster sends 64-byte \
         UDP datagrams round-robin to them at 20,000/s (wireguard-go drops none), then as \
         fast as it can, 3 s per measurement; an empty program on the four hooks, the floor \
         (a program that adds one to one per-CPU counter, nothing parsed) on the same hooks, \
         the floor after reading what any counting reads of its packet (length, GSO size, a \
         header word), the collector counting (`--latency.no-delay`), counting on the WireGuard interface \
         alone (`--underlay none`: net of the empty program's cost per run times its own runs), \
         with everything on, and with everything on at `--latency.sample 64`, alternating, medians of 3, bpf stats on \
         throughout; a wire packet is a data message (the WireGuard interface's tx + rx \
         packets). The per-run column splits the sending side: ns per run at the plaintext \
         egress and at the underlay egress (the empty program and the floors: per run of any \
         hook). The test-run column is BPF_PROG_TEST_RUN's figure for the same path \
         (plaintext egress + the data message at the underlay's egress, net of the empty \
         program) with that many peers in the maps. The last column: the device's encap \
         delay samples per 1,000 wire packets (the blaster's bursts of 64 datagrams to one \
         peer against the delay FIFO's seven entries: all 1,000 would be every packet, ~16 \
         one in 64).\n\n\
         Latency settings: the lab's wireguard-go tunnel (one peer), TCP bulk (iperf3) and an \
         ICMP echo flood (`ping -f`) from a to b, 3 s per measurement, the collector on a with \
         each setting in turn and an empty program on the four hooks, alternating, medians of \
         3, bpf stats on; program time of the four hooks less the empty program's time per \
         run times the runs, over the data messages on the wire both ways (the collector's \
         own count, GSO batches by their segments).\n\n\
         Kernel WireGuard at scale: in a qemu guest (TCG, 2 vCPUs, Debian 13's kernel), lab \
         side a's kernel device gets that many peers (one `wg addconf` each step); the \
         release collector (netlink; polling every 30 s, so its poll loop stays out of the \
         timed rounds as it does on hardware), prometheus_wireguard_exporter (`wg show` per \
         scrape) and `wg show wg0 dump` itself, alternating, a second's pause before each, \
         medians of 9 after a warm-up (the exporter above 1,000 peers once: a scrape takes \
         minutes there under TCG); collector / dump is the median of each round's ratio; \
         the page is read as Prometheus reads it, into a buffer kept across scrapes. Netlink, \
         maps and until headers are the collector's own account (its page): reading netlink \
         and the maps, and the mean time to the answer's headers, over plain and gzip scrapes \
         (reading and encoding; the rest of a scrape is sending the page). The last six: \
         scrapes asking for gzip, as Prometheus does by default, and for zstd, as it does with \
         `--enable-feature=zstd-scrape`, in each round too (the page's public keys, ~1 MB apart \
         from one family to the next, are beyond deflate's 32 KiB window, within zstd's 8 MiB).\n\n\
         Load: `wrk -t2 -c200 -d30s --latency` on /metrics of the release collector at 1,000 \
         peers; halfway through a peer is added and the time until its allowed IP is in the \
         pinned host map (bpftool) is taken, to show the scrape crowd does not hold up the map \
         sync.\n\n\
         {table}",
        date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine = machine(),
    );
    // What follows the tables (side-by-side runs, targets, the soak's section from `cargo
    // xtask soak`) was written by hand or by other commands: keep it.
    let old = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_default();
    let kept = old.find(KEPT).or_else(|| old.find(SOAK)).map_or(KEPT, |at| &old[at..]);
    std::fs::write("BENCHMARKS.md", format!("{}\n\n{kept}", doc.trim_end()))?;
    println!("\nwritten to BENCHMARKS.md");
    Ok(())
}

const SOAK: &str = "## Soak";

/// Where the tables `cargo xtask bench` writes end, and the kept part of BENCHMARKS.md begins.
const KEPT: &str = "<!-- Above: the tables of the last `cargo xtask bench`, rewritten by each run. Below: side-by-side runs, targets and the soak, kept. -->";

/// `cargo xtask soak`: the collector for `minutes` under churn (tests/bench/src/soak.rs);
/// its table replaces the soak section of BENCHMARKS.md.
pub fn soak(minutes: u64) -> Result<()> {
    crate::cargo(&["build", "--release", "--package", "wg-bench"])?;
    crate::cargo(&["build", "--release", "--package", "wg-collector", "--bin", "wg-collector"])?;
    let out = Command::new("target/release/wg-bench")
        .args(["--soak", &minutes.to_string()])
        .output()
        .context("running wg-bench --soak")?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{table}");
    if !out.status.success() {
        bail!("soak failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let section = format!(
        "{SOAK}\n\nProduced by `cargo xtask soak --minutes {minutes}` on {}, {}: the release collector on a wireguard-go device, peers added and removed 100 times a second (around 100 peers), a scrape and a ping every second; RSS and open file descriptors every 10 s (one row a minute).\n\n{table}",
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine()
    );
    let old = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_default();
    let before = old.find(SOAK).map_or(old.as_str(), |at| &old[..at]);
    std::fs::write("BENCHMARKS.md", format!("{}\n\n{section}", before.trim_end()))?;
    println!("\nwritten to BENCHMARKS.md");
    Ok(())
}

pub(crate) fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{} cores ({cpu}), kernel {}", sh("nproc", &[]), sh("uname", &["-r"]))
}
