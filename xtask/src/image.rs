//! The OCI image: wg-collector/deploy/Containerfile (FROM scratch, the static binary alone)
//! built by buildah into a container store of our own under target/ (never the machine's),
//! saved as an OCI archive, and checked with `podman image inspect`; `run_against_lab` runs
//! it with podman as the DaemonSet does and reads exact counts.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use wg_tests::{lab::settled, netns, scrape::http_get, EmptyNamespace, Implementation, Lab, Metrics};

use crate::output;

/// The name the image is built and saved under; deploy/daemonset.yaml runs this one.
pub const IMAGE: &str = concat!("localhost/wg-collector:", env!("CARGO_PKG_VERSION"));
/// buildah's and podman's store for our image: a folder of ours, whatever the machine has.
const STORE: &str = "target/containers";

/// podman or buildah on our store: vfs, which needs no overlay support from the kernel.
fn tool(name: &str) -> Command {
    let root = std::env::current_dir().unwrap_or_default().join(STORE);
    let mut c = Command::new(name);
    c.arg("--root").arg(root.join("storage")).arg("--runroot").arg(root.join("run"));
    c.args(["--storage-driver", "vfs"]);
    c
}

/// Builds the image from the checked static binary, saves it, inspects it; returns the archive.
pub fn build(binary: &Path) -> Result<PathBuf> {
    let version = output(Command::new(binary).arg("--version"))?;
    let commit = version.split("commit ").nth(1).and_then(|s| s.split([',', ')']).next()).unwrap_or("unknown");
    let context = binary.parent().context("the binary's folder")?;
    output(
        tool("buildah")
            .args(["build", "--quiet", "--file", "wg-collector/deploy/Containerfile", "--tag", IMAGE])
            .arg(format!("--build-arg=VERSION={}", env!("CARGO_PKG_VERSION")))
            .arg(format!("--build-arg=COMMIT={commit}"))
            // Time stamps from the commit's time: the same commit gives the same image.
            .args(["--timestamp", &crate::commit_time().unwrap_or_else(|| "0".into())])
            .arg(context),
    )
    .context("buildah build (cargo xtask setup installs buildah)")?;
    let archive = PathBuf::from(format!("target/dist/wg-collector-{}.oci.tar", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_file(&archive);
    output(tool("podman").args(["save", "--quiet", "--format", "oci-archive", "--output"]).arg(&archive).arg(IMAGE))?;
    inspect(commit)?;
    Ok(archive)
}

/// The image runs our binary, as root (see the Containerfile), exposes 9586 and names its
/// version and commit; it holds one layer (the binary) and nothing else.
fn inspect(commit: &str) -> Result<()> {
    let fmt = "{{json .Config.Entrypoint}}|{{.Config.User}}|{{json .Config.ExposedPorts}}|\
               {{index .Labels \"org.opencontainers.image.version\"}}|\
               {{index .Labels \"org.opencontainers.image.revision\"}}|{{len .RootFS.Layers}}";
    let got = output(tool("podman").args(["image", "inspect", "--format", fmt, IMAGE]))?;
    let want =
        format!("[\"/usr/bin/wg-collector\"]|0:0|{{\"9586/tcp\":{{}}}}|{}|{commit}|1", env!("CARGO_PKG_VERSION"));
    if got.trim() != want {
        bail!("podman image inspect {IMAGE}: {}\nwanted: {want}", got.trim());
    }
    println!("dist: image {IMAGE}: entrypoint, user, port, version and commit as built ({})", got.trim());
    Ok(())
}

/// Runs the image with podman as deploy/daemonset.yaml runs it (its capabilities, the host's
/// processes, `--netns all`, the bpffs, the UAPI socket folder and /run/netns mounted) in an
/// empty network namespace (the node's, with no WireGuard of its own) against a wireguard-go
/// lab (two pods' namespaces); pings, then reads exact counts of the device it found in the
/// lab side's namespace.
pub fn run_against_lab() -> Result<()> {
    let lab = Lab::new(Implementation::WireguardGo)?;
    lab.wait_tunnel()?;
    let node = EmptyNamespace::new()?;
    let container = Container::start(&node.name)?;
    let key = lab.b.public_key.clone();
    let labels = [("device", lab.a.iface.as_str()), ("netns", lab.a.ns.as_str()), ("public_key", key.as_str())];
    let read = |m: &Metrics| {
        ["wireguard_peer_transmit_packets_total", "wireguard_peer_receive_packets_total"].map(|n| m.get(n, &labels))
    };
    let before = settled(|| container.scrape().map(|m| read(&m)).unwrap_or_default())?;
    let [Some(tx0), Some(rx0)] = before else {
        bail!("no per-peer packet counters for {key}: {before:?}; logs:\n{}", container.logs())
    };
    const PINGS: u32 = 20;
    lab.exec('a', "ping", &["-c", &PINGS.to_string(), "-i", "0.02", "-W", "1", &lab.b.tunnel_v4.to_string()])?;
    let after = settled(|| container.scrape().map(|m| read(&m)).unwrap_or_default())?;
    let [Some(tx1), Some(rx1)] = after else { bail!("the counters went away: {after:?}") };
    let (tx, rx) = (tx1 - tx0, rx1 - rx0);
    // Keepalives are off in the lab: each echo request and reply is one packet on wg0.
    if (tx, rx) != (PINGS as f64, PINGS as f64) {
        bail!("the image counted {tx} sent and {rx} received packets for {PINGS} pings; logs:\n{}", container.logs());
    }
    println!("image: {IMAGE} in podman counted {PINGS} pings exactly ({tx} sent, {rx} received)");
    Ok(())
}

/// The image running in a lab namespace; removed (and its bpffs unmounted) on drop.
struct Container {
    name: String,
    ns: String,
    bpffs: PathBuf,
}

impl Container {
    fn start(ns: &str) -> Result<Self> {
        let name = format!("wg-collector-test-{}", std::process::id());
        let bpffs = std::env::temp_dir().join(format!("{name}-bpffs"));
        std::fs::create_dir_all(&bpffs)?;
        netns::sh(&["mount", "-t", "bpf", "bpf", bpffs.to_str().unwrap()])?;
        let c = Container { name, ns: ns.to_string(), bpffs };
        let daemonset = std::fs::read_to_string("wg-collector/deploy/daemonset.yaml")?;
        let caps = daemonset_caps(&daemonset)?;
        let mut run = tool("podman");
        run.args(["run", "--detach", "--name", &c.name, "--network", &format!("ns:/run/netns/{ns}"), "--pid", "host"])
            // This machine: crun refuses its hybrid cgroups (runc takes them), and podman's
            // default open-files limit is above the hard limit here.
            .args(["--runtime", "runc", "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"])
            .args(["--cap-drop", "all"])
            .args(caps.iter().flat_map(|c| ["--cap-add".to_string(), c.clone()]))
            // As the DaemonSet: podman's default seccomp profile, like the Kubernetes
            // runtimes', denies bpf() without CAP_SYS_ADMIN.
            .args(["--read-only", "--security-opt", "no-new-privileges", "--security-opt", "seccomp=unconfined"])
            .arg("--volume")
            .arg(format!("{}:/sys/fs/bpf", c.bpffs.display()))
            .args(["--volume", "/var/run/wireguard:/var/run/wireguard:ro"])
            .args(["--volume", "/run/netns:/run/netns:ro,rslave"])
            .args([IMAGE, "--poll-interval", "0.2", "--netns", "all"]);
        output(&mut run).context("podman run")?;
        wg_tests::lab::wait_until(Duration::from_secs(20), || c.scrape().is_ok())
            .with_context(|| format!("the container never served; logs:\n{}", c.logs()))?;
        Ok(c)
    }

    fn scrape(&self) -> Result<Metrics> {
        let body = netns::within(&self.ns, || http_get("127.0.0.1:9586".parse()?, "/metrics"))?;
        Metrics::parse(&body)
    }

    fn logs(&self) -> String {
        tool("podman").args(["logs", &self.name]).output().map_or_else(
            |e| e.to_string(),
            |o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = tool("podman").args(["rm", "--force", "--time", "5", &self.name]).output();
        let _ = netns::sh(&["umount", "--lazy", self.bpffs.to_str().unwrap()]);
        let _ = std::fs::remove_dir(&self.bpffs);
    }
}

/// The capabilities deploy/daemonset.yaml adds (`add: ["BPF", ...]`): the test runs with
/// exactly those.
fn daemonset_caps(yaml: &str) -> Result<Vec<String>> {
    let line = yaml.lines().find_map(|l| l.trim().strip_prefix("add: ")).context("no capabilities in the DaemonSet")?;
    Ok(line.trim_matches(|c| c == '[' || c == ']').split(',').map(|c| c.trim().trim_matches('"').to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DaemonSet runs the image `cargo xtask dist` builds, with the capabilities the
    /// podman test grants.
    #[test]
    fn the_daemonset_runs_the_image_dist_builds() {
        let yaml = std::fs::read_to_string(crate::workspace_root().join("wg-collector/deploy/daemonset.yaml")).unwrap();
        assert!(yaml.contains(&format!("image: {IMAGE}\n")), "daemonset.yaml should run {IMAGE}");
        assert_eq!(
            daemonset_caps(&yaml).unwrap(),
            ["BPF", "NET_ADMIN", "PERFMON", "SETPCAP", "SYS_ADMIN", "SYS_PTRACE"]
        );
        // What the podman test gives it besides: the host's processes and named namespaces.
        for line in ["hostPID: true", "- --netns=all", "mountPath: /run/netns"] {
            assert!(yaml.contains(line), "daemonset.yaml should have {line}");
        }
        assert!(yaml.contains("seccompProfile: { type: Unconfined }"), "podman runs it with seccomp=unconfined");
    }
}
