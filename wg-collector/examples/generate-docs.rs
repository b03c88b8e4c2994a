//! Writes the man page and the shell completions from the clap definition of the command
//! line (`config::Args`), so they cannot drift from the flags: `cargo xtask dist` runs it and
//! the packages ship what it writes.
//!
//!     cargo run --example generate-docs -- OUT_DIR
//!
//! OUT_DIR/man/wg-collector.1.gz, OUT_DIR/completions/{wg-collector.bash,_wg-collector,
//! wg-collector.fish}. An example rather than a flag of the daemon: the shipped binary carries
//! neither generator.

use std::{io::Write, path::PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Roff};
use wg_collector::config::Args;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).expect("usage: generate-docs OUT_DIR"));
    let cmd = Args::command().name("wg-collector").version(env!("CARGO_PKG_VERSION"));

    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    let mut page = Vec::new();
    let m = clap_mangen::Man::new(cmd.clone()).date("").manual("wg-collector manual");
    m.render_title(&mut page)?;
    m.render_name_section(&mut page)?;
    m.render_synopsis_section(&mut page)?;
    m.render_description_section(&mut page)?;
    m.render_options_section(&mut page)?;
    operator_sections().to_writer(&mut page)?;
    m.render_version_section(&mut page)?;
    // gzip -9 without a name or time stamp, as Debian policy asks: the same page, byte for byte.
    let file = std::fs::File::create(man.join("wg-collector.1.gz"))?;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(file, flate2::Compression::best());
    gz.write_all(&page)?;
    gz.finish()?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "wg-collector", &completions)?;
    }
    Ok(())
}

/// What an operator looks for in a daemon's page beyond its flags: the files, the signals,
/// what it leaves in the kernel, and how to read what it serves.
fn operator_sections() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "/etc/default/wg-collector, /etc/sysconfig/wg-collector",
            "The flags the systemd unit passes (WG_COLLECTOR_ARGS). As shipped: every WireGuard device, \
             127.0.0.1:9586, no credentials.",
        ),
        (
            "/sys/fs/bpf/wg-collector/",
            "The pinned programs and maps (see --bpf.pin-path): they keep the counts across restarts and upgrades.",
        ),
        ("/var/run/wireguard/", "The UAPI sockets of wireguard-go and boringtun (see --uapi-dir)."),
    ] {
        r.control("TP", []).text([bold(path)]).text([roman(what)]);
    }
    r.control("SH", ["SIGNALS"]);
    r.control("TP", [])
        .text([bold("SIGHUP")])
        .text([roman("Rereads --web.config.file and --web.bearer-token-file (systemctl reload); the counts go on.")]);
    r.control("TP", []).text([bold("SIGTERM, SIGINT")]).text([roman(
        "Stops serving and exits, leaving the programs attached and pinned, so a restart loses no packet. \
         wg-collector --bpf.unpin detaches and removes them.",
    )]);
    r.control("SH", ["EXAMPLES"]);
    for (cmd, what) in [
        ("wg-collector", "Every WireGuard device, metrics on http://127.0.0.1:9586/metrics."),
        (
            "wg-collector --web.listen-address wg0:9586 --web.bearer-token-file /etc/wg-collector/tokens",
            "Serves only over the VPN, to scrapers that present one of the tokens.",
        ),
        ("wg-collector --bpf.unpin", "Uninstall: detaches the programs and removes the pins, then exits."),
    ] {
        r.control("TP", []).text([bold(cmd)]).text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([italic("wg"), roman("(8), "), italic("wg-quick"), roman("(8), "), italic("systemctl"), roman("(1)")]);
    r
}
