//! A lab of two real WireGuard peers, `a` and `b`, each in its own network namespace,
//! joined by a veth pair (the underlay, 10.200.0.0/24). Tunnel addresses are 10.99.0.1/24
//! and fd99::1/64 on `a`, 10.99.0.2/24 and fd99::2/64 on `b`; each side's only peer is the
//! other, with allowed IPs of its /32 and /128.
//!
//! Interface names are unique on the host (`wgl<pid>x<n><side>`), so the userspace daemons'
//! UAPI sockets (/var/run/wireguard/<iface>.sock) never collide and no mount namespace is
//! needed; the collector in a namespace ignores sockets whose interface is not there.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    netns::{self, run, sh},
    relay::Relay,
};

/// Which WireGuard implementation runs the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    WireguardGo,
    Boringtun,
    /// The kernel module (only where it is loaded: the kernel-WireGuard VM).
    Kernel,
}

impl Implementation {
    /// The name the collector reports in its `implementation` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::Boringtun => "boringtun",
            Self::Kernel => "kernel",
        }
    }
}

/// Where the UAPI sockets live.
pub const UAPI_DIR: &str = "/var/run/wireguard";
/// WireGuard's listen port on both sides.
pub const PORT: u16 = 51820;
/// Every lab namespace's name starts so: a killed test's are swept by it.
pub const PREFIX: &str = "wgl";

/// One peer of the lab.
pub struct Side {
    pub name: char,
    /// Network namespace, also the WireGuard interface's name.
    pub ns: String,
    pub iface: String,
    pub private_key_file: PathBuf,
    pub public_key: String,
    pub tunnel_v4: Ipv4Addr,
    pub tunnel_v6: Ipv6Addr,
    pub underlay: Ipv4Addr,
    daemon: Option<Child>,
}

pub struct Lab {
    pub implementation: Implementation,
    pub a: Side,
    pub b: Side,
    /// With a delay: the middle namespace and its relay (see [`Lab::with_delay`]).
    relay: Option<(String, Relay)>,
    dir: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the lab and waits until the tunnel carries a ping both ways (so the first
    /// handshake is behind it).
    pub fn new(implementation: Implementation) -> Result<Self> {
        Self::build_with(implementation, None)
    }

    /// A lab whose WireGuard datagrams pass through a relay in a third namespace `r` that
    /// holds each one for `delay` in each direction: the tunnel's round trip grows by twice
    /// `delay`, a known truth for latency tests (this kernel has no netem). Side a's underlay
    /// is 10.200.0.1/24 (relay 10.200.0.254), side b's 10.201.0.2/24 (relay 10.201.0.254);
    /// each side's peer endpoint is the relay.
    pub fn with_delay(implementation: Implementation, delay: Duration) -> Result<Self> {
        Self::build_with(implementation, Some(delay))
    }

    fn build_with(implementation: Implementation, delay: Option<Duration>) -> Result<Self> {
        sweep_stale();
        let id = format!("{PREFIX}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let b_net = if delay.is_some() { 201 } else { 200 };
        let side = |name: char, n: u8, net: u8| -> Result<Side> {
            let (private_key_file, public_key) = keypair(&dir, &name.to_string())?;
            Ok(Side {
                name,
                ns: format!("{id}{name}"),
                iface: format!("{id}{name}"),
                private_key_file,
                public_key,
                tunnel_v4: Ipv4Addr::new(10, 99, 0, n),
                tunnel_v6: Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, n as u16),
                underlay: Ipv4Addr::new(10, net, 0, n),
                daemon: None,
            })
        };
        let mut lab = Lab { implementation, a: side('a', 1, 200)?, b: side('b', 2, b_net)?, relay: None, dir };
        // From here on, Drop cleans up whatever was made.
        lab.build(&id, delay).with_context(|| format!("building lab {id} ({implementation:?})"))?;
        Ok(lab)
    }

    fn build(&mut self, id: &str, delay: Option<Duration>) -> Result<()> {
        for s in [&self.a, &self.b] {
            sh(&["ip", "netns", "add", &s.ns])?;
            sh(&["ip", "-n", &s.ns, "link", "set", "lo", "up"])?;
        }
        match delay {
            None => {
                sh(&[
                    "ip", "-n", &self.a.ns, "link", "add", "under", "type", "veth", "peer", "name", "under", "netns",
                    &self.b.ns,
                ])?;
            }
            Some(delay) => {
                let r = format!("{id}r");
                sh(&["ip", "netns", "add", &r])?;
                self.relay = Some((r.clone(), Relay::idle()));
                sh(&["ip", "-n", &r, "link", "set", "lo", "up"])?;
                for (s, name, addr) in [(&self.a, "ua", "10.200.0.254/24"), (&self.b, "ub", "10.201.0.254/24")] {
                    sh(&[
                        "ip", "-n", &r, "link", "add", name, "type", "veth", "peer", "name", "under", "netns", &s.ns,
                    ])?;
                    sh(&["ip", "-n", &r, "addr", "add", addr, "dev", name])?;
                    sh(&["ip", "-n", &r, "link", "set", name, "up"])?;
                }
                let relay = Relay::start(
                    &r,
                    delay,
                    ("10.200.0.254:51820".parse()?, SocketAddr::from((self.a.underlay, PORT))),
                    ("10.201.0.254:51820".parse()?, SocketAddr::from((self.b.underlay, PORT))),
                )?;
                self.relay = Some((r, relay));
            }
        }
        for s in [&self.a, &self.b] {
            sh(&["ip", "-n", &s.ns, "addr", "add", &format!("{}/24", s.underlay), "dev", "under"])?;
            sh(&["ip", "-n", &s.ns, "link", "set", "under", "up"])?;
        }
        self.start_daemon('a')?;
        self.start_daemon('b')?;
        self.wait_tunnel()
    }

    /// The relay of a lab made [`Lab::with_delay`].
    pub fn relay(&self) -> Result<&Relay> {
        self.relay.as_ref().map(|(_, r)| r).context("this lab has no relay (Lab::with_delay makes one)")
    }

    /// Where side `name` sends its WireGuard datagrams for the other side: the other side's
    /// underlay address, or the relay's address on this side's link.
    fn endpoint_for(&self, name: char) -> SocketAddr {
        match (&self.relay, name) {
            (Some(_), 'a') => "10.200.0.254:51820".parse().unwrap(),
            (Some(_), _) => "10.201.0.254:51820".parse().unwrap(),
            (None, _) => SocketAddr::from((self.other(name).underlay, PORT)),
        }
    }

    pub fn side(&self, name: char) -> &Side {
        if name == 'a' {
            &self.a
        } else {
            &self.b
        }
    }

    fn side_mut(&mut self, name: char) -> &mut Side {
        if name == 'a' {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    fn other(&self, name: char) -> &Side {
        self.side(if name == 'a' { 'b' } else { 'a' })
    }

    /// Starts the side's WireGuard daemon, configures it, and brings the interface up.
    pub fn start_daemon(&mut self, name: char) -> Result<()> {
        let imp = self.implementation;
        let (ns, iface) = (self.side(name).ns.clone(), self.side(name).iface.clone());
        if imp == Implementation::Kernel {
            sh(&["ip", "-n", &ns, "link", "add", &iface, "type", "wireguard"])?;
            return self.configure(name);
        }
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut c = match imp {
            Implementation::Kernel => unreachable!(),
            Implementation::WireguardGo => {
                let mut c = netns::cmd(&ns, "wireguard-go");
                c.args(["-f", &iface]);
                c
            }
            Implementation::Boringtun => {
                let mut c = netns::cmd(&ns, &tool("boringtun-cli")?);
                c.args([&iface, "--foreground", "--disable-drop-privileges"]);
                c
            }
        };
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {c:?}"))?;
        self.side_mut(name).daemon = Some(child);

        let sock = Path::new(UAPI_DIR).join(format!("{iface}.sock"));
        wait_until(Duration::from_secs(10), || sock.exists() && sh(&["ip", "-n", &ns, "link", "show", &iface]).is_ok())
            .with_context(|| format!("{imp:?} did not create {} and {iface}", sock.display()))?;
        self.configure(name)
    }

    /// Keys, port, peer, addresses, up.
    fn configure(&mut self, name: char) -> Result<()> {
        let (ns, iface) = (self.side(name).ns.clone(), self.side(name).iface.clone());

        let me = self.side(name);
        let peer = self.other(name);
        let endpoint = self.endpoint_for(name);
        run(netns::cmd(&ns, "wg").args([
            "set",
            &iface,
            "private-key",
            me.private_key_file.to_str().unwrap(),
            "listen-port",
            &PORT.to_string(),
            "peer",
            &peer.public_key,
            "allowed-ips",
            &format!("{}/32,{}/128", peer.tunnel_v4, peer.tunnel_v6),
            "endpoint",
            &endpoint.to_string(),
        ]))?;
        sh(&["ip", "-n", &ns, "link", "set", &iface, "mtu", "1420"])?;
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", me.tunnel_v4), "dev", &iface])?;
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{}/64", me.tunnel_v6), "dev", &iface, "nodad"])?;
        sh(&["ip", "-n", &ns, "link", "set", &iface, "up"])?;
        Ok(())
    }

    /// Removes the other side's peer from side `name` and adds it again, as configured: its
    /// session is gone, so the next packet from `name` starts a new handshake.
    /// One `wg set` (one transaction), so a reading never finds the peer missing and the
    /// collector keeps its slot and counts; boringtun keeps the session through that, so there
    /// it is two (a collector that reads in between starts the peer afresh).
    pub fn reset_peer(&self, name: char) -> Result<()> {
        let peer = self.other(name);
        let mut args = vec!["set", "{iface}", "peer", &peer.public_key, "remove"];
        if self.implementation == Implementation::Boringtun {
            self.wg(name, &args)?;
            args.truncate(2);
        }
        let allowed = format!("{}/32,{}/128", peer.tunnel_v4, peer.tunnel_v6);
        let endpoint = self.endpoint_for(name).to_string();
        args.extend(["peer", &peer.public_key, "allowed-ips", &allowed, "endpoint", &endpoint]);
        self.wg(name, &args)?;
        Ok(())
    }

    /// Stops the side's daemon; its interface and socket go with it (a kernel device is
    /// deleted).
    pub fn stop_daemon(&mut self, name: char) -> Result<()> {
        let (ns, iface) = (self.side(name).ns.clone(), self.side(name).iface.clone());
        if self.implementation == Implementation::Kernel {
            sh(&["ip", "-n", &ns, "link", "del", &iface])?;
        }
        if let Some(mut child) = self.side_mut(name).daemon.take() {
            terminate(&mut child);
        }
        wait_until(Duration::from_secs(10), || sh(&["ip", "-n", &ns, "link", "show", &iface]).is_err())
            .with_context(|| format!("{iface} still exists after its daemon stopped"))?;
        let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{iface}.sock")));
        Ok(())
    }

    /// Stops the side's userspace daemon (SIGSTOP) until the guard resumes it or drops:
    /// meanwhile packets wait inside WireGuard, for a time the test knows.
    pub fn pause(&self, name: char) -> Result<Paused> {
        let pid = self.side(name).daemon.as_ref().context("no userspace daemon to pause")?.id() as i32;
        // SAFETY: a signal to our own child.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!("SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        }
        // The signal stops the threads asynchronously: wait until every one is stopped, so no
        // packet sent from now on is read before the resume.
        let stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| {
                tasks.flatten().all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
                })
            })
        };
        wait_until(Duration::from_secs(2), stopped).context("the daemon did not stop")?;
        Ok(Paused { pid, resumed: false })
    }

    /// Pings from a to b until the tunnel answers (first handshake done).
    pub fn wait_tunnel(&self) -> Result<()> {
        let target = self.b.tunnel_v4.to_string();
        wait_until(Duration::from_secs(15), || {
            run(netns::cmd(&self.a.ns, "ping").args(["-c", "1", "-W", "1", &target])).is_ok()
        })
        .context("the tunnel never answered a ping")
    }

    /// A directory of the lab's own, removed with it: for a test's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `program args` in the side's namespace.
    pub fn exec(&self, name: char, program: &str, args: &[&str]) -> Result<String> {
        run(netns::cmd(&self.side(name).ns, program).args(args))
    }

    /// Runs `wg <args>` against the side's device (`{iface}` in args is replaced).
    pub fn wg(&self, name: char, args: &[&str]) -> Result<String> {
        let iface = &self.side(name).iface;
        let args: Vec<String> = args.iter().map(|a| a.replace("{iface}", iface)).collect();
        run(netns::cmd(&self.side(name).ns, "wg").args(&args))
    }

    /// Sends one `set=1` operation (UAPI lines, `public_key=<hex>` and so on) straight to the
    /// side's UAPI socket, as `wg set` would but without a process per change; returns once
    /// WireGuard applied it.
    pub fn uapi_set(&self, name: char, lines: &str) -> Result<()> {
        use std::io::{BufRead, Write};
        let sock = Path::new(UAPI_DIR).join(format!("{}.sock", self.side(name).iface));
        let mut s = std::os::unix::net::UnixStream::connect(&sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        write!(s, "set=1\n{lines}\n")?;
        let mut reply = String::new();
        let mut r = std::io::BufReader::new(s);
        while r.read_line(&mut reply)? > 1 {}
        if !reply.contains("errno=0") {
            bail!("UAPI set refused: {reply:?} for {lines:?}");
        }
        Ok(())
    }

    /// Gives device a `n` peers in all, b and random others (keys that need not answer to
    /// exist, a /32 each), and b also `routed` as /32 allowed IPs, in one `wg addconf` (one
    /// argument could not carry 10,000 of them).
    pub fn add_peers(&self, n: usize, routed: &[Ipv4Addr]) -> Result<()> {
        let mut conf = String::new();
        for i in 0..n.saturating_sub(1) {
            let key = random_public_key();
            let (x, y, z) = (100 + i / 65536, (i / 256) % 256, i % 256);
            conf.push_str(&format!("[Peer]\nPublicKey = {key}\nAllowedIPs = 10.{x}.{y}.{z}/32\n\n"));
        }
        if !routed.is_empty() {
            // A [Peer] section replaces the peer's allowed IPs: b's own addresses come again.
            let b = &self.b;
            conf.push_str(&format!("[Peer]\nPublicKey = {}\n", b.public_key));
            conf.push_str(&format!("AllowedIPs = {}/32, {}/128\n", b.tunnel_v4, b.tunnel_v6));
            for a in routed {
                conf.push_str(&format!("AllowedIPs = {a}/32\n"));
            }
        }
        let path = self.dir().join("peers.conf");
        std::fs::write(&path, conf)?;
        self.wg('a', &["addconf", "{iface}", path.to_str().context("a lab path")?])?;
        std::fs::remove_file(&path)?;
        Ok(())
    }

    /// A fresh key pair (private key file, public key) in the lab's directory.
    pub fn keypair(&self, name: &str) -> Result<(PathBuf, String)> {
        keypair(&self.dir, name)
    }

    /// A side's kernel SNMP counter, e.g. ("Tcp", "OutSegs"), from /proc/net/snmp in its
    /// namespace.
    pub fn snmp(&self, name: char, proto: &str, field: &str) -> Result<u64> {
        let text = self.exec(name, "cat", &["/proc/net/snmp"])?;
        let mut lines = text.lines().filter(|l| l.starts_with(&format!("{proto}:")));
        let (head, vals) = (lines.next().context("no header")?, lines.next().context("no values")?);
        let i = head.split_whitespace().position(|h| h == field).with_context(|| format!("no {proto} {field}"))?;
        Ok(vals.split_whitespace().nth(i).context("short line")?.parse()?)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in ['a', 'b'] {
            if let Some(mut child) = self.side_mut(name).daemon.take() {
                terminate(&mut child);
            }
        }
        if let Some((ns, relay)) = self.relay.take() {
            drop(relay);
            remove_namespace(&ns);
        }
        for s in [&self.a, &self.b] {
            remove_namespace(&s.ns);
            let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.sock", s.iface)));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A WireGuard device alone in a network namespace of its own (named like a lab's, so a
/// killed test's is swept), with one peer that has no endpoint: packets to the peer's
/// address (10.98.0.2) leave the device and are counted there, unanswered. For tests that
/// make and delete whole namespaces. Dropping it kills the daemon and deletes the namespace.
pub struct SoloDevice {
    pub ns: String,
    pub iface: String,
    pub peer_key: String,
    daemon: Option<Child>,
}

impl SoloDevice {
    /// A name for one, unique on the host: the namespace's and the device's.
    pub fn fresh_name() -> String {
        format!("{PREFIX}{}x{}s", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Creates namespace and device `id` (wireguard-go), configured and up; `id` from
    /// [`fresh_name`](Self::fresh_name), or the name of one dropped before (made again).
    pub fn new(id: &str) -> Result<Self> {
        Self::make(id, false)
    }

    /// Like [`new`](Self::new), but as in a container: wireguard-go runs in a mount namespace
    /// of its own whose /run/wireguard is a private tmpfs, so its UAPI socket is seen from
    /// outside only under /proc/PID/root.
    pub fn contained(id: &str) -> Result<Self> {
        Self::make(id, true)
    }

    fn make(id: &str, contained: bool) -> Result<Self> {
        sweep_stale();
        let mut solo = SoloDevice { ns: id.into(), iface: id.into(), peer_key: random_public_key(), daemon: None };
        solo.build(contained).with_context(|| format!("building {id}"))?;
        Ok(solo)
    }

    fn build(&mut self, contained: bool) -> Result<()> {
        let (ns, iface) = (self.ns.as_str(), self.iface.as_str());
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        let mut c = if contained {
            // unshare and sh exec: the child's pid is wireguard-go's.
            let mut c = netns::cmd(ns, "unshare");
            let script = format!("mount -t tmpfs tmpfs /run/wireguard && exec wireguard-go -f {iface}");
            c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
            c
        } else {
            let mut c = netns::cmd(ns, "wireguard-go");
            c.args(["-f", iface]);
            c
        };
        let child = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let pid = child.id().to_string();
        self.daemon = Some(child);
        let sock = match contained {
            true => PathBuf::from(format!("/proc/{pid}/root/run/wireguard/{iface}.sock")),
            false => Path::new(UAPI_DIR).join(format!("{iface}.sock")),
        };
        wait_until(Duration::from_secs(10), || sock.exists() && sh(&["ip", "-n", ns, "link", "show", iface]).is_ok())
            .with_context(|| format!("wireguard-go did not create {} and {iface}", sock.display()))?;
        let key = sh(&["wg", "genkey"])?;
        let key_file = std::env::temp_dir().join(format!("{iface}.key"));
        std::fs::write(&key_file, key.trim())?;
        // wg finds the socket in wireguard-go's mount namespace.
        let mut wg = if contained {
            let mut c = Command::new("nsenter");
            c.args(["--target", &pid, "--mount", "wg"]);
            c
        } else {
            netns::cmd(ns, "wg")
        };
        let set = run(wg.args([
            "set",
            iface,
            "private-key",
            key_file.to_str().unwrap(),
            "peer",
            &self.peer_key,
            "allowed-ips",
            "10.98.0.2/32",
        ]));
        let _ = std::fs::remove_file(&key_file);
        set?;
        sh(&["ip", "-n", ns, "addr", "add", "10.98.0.1/24", "dev", iface])?;
        sh(&["ip", "-n", ns, "link", "set", iface, "up"])?;
        Ok(())
    }

    /// Sends `count` pings to the peer (unanswered): `count` packets leave the device.
    pub fn ping(&self, count: u32) {
        let _ = run(netns::cmd(&self.ns, "ping").args([
            "-c",
            &count.to_string(),
            "-i",
            "0.01",
            "-W",
            "0.05",
            "-q",
            "10.98.0.2",
        ]));
    }
}

impl Drop for SoloDevice {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            terminate(&mut child);
        }
        remove_namespace(&self.ns);
        let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.sock", self.iface)));
    }
}

/// A network namespace with nothing in it but loopback (named like a lab's); deleted on drop.
pub struct EmptyNamespace {
    pub name: String,
}

impl EmptyNamespace {
    pub fn new() -> Result<Self> {
        sweep_stale();
        let name = format!("{PREFIX}{}x{}e", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        sh(&["ip", "netns", "add", &name])?;
        let ns = EmptyNamespace { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for EmptyNamespace {
    fn drop(&mut self) {
        remove_namespace(&self.name);
    }
}

/// SIGTERM, then SIGKILL after 3 s; always reaps.
pub fn terminate(child: &mut Child) {
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills what still runs in a namespace and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = sh(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = sh(&["ip", "netns", "del", ns]);
}

/// Removes namespaces and sockets of labs whose process is gone (killed before its Drop).
fn sweep_stale() {
    let owner_alive = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else { return true };
        let Some((pid, _)) = rest.split_once('x') else { return true };
        Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if !owner_alive(ns) {
                remove_namespace(ns);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(UAPI_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && !owner_alive(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn keypair(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let private = sh(&["wg", "genkey"])?;
    let file = dir.join(format!("{name}.key"));
    std::fs::write(&file, &private)?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut c = Command::new("wg").arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), private.as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed");
    }
    Ok((file, String::from_utf8(out.stdout)?.trim().to_string()))
}

/// A random WireGuard public key (base64) for a peer that need not exist: any 32 bytes are
/// a Curve25519 public key. Far cheaper than `wg genkey | wg pubkey` per peer at scale.
pub fn random_public_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>())
}

/// A key as UAPI spells it (hex) from its base64 form.
pub fn key_hex(base64_key: &str) -> String {
    use base64::Engine;
    let k = base64::engine::general_purpose::STANDARD.decode(base64_key).expect("a base64 key");
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// `read()` once it gives the same value twice in a row, 100 ms apart: counters that were
/// still moving (the last segments of a connection's teardown, datagrams still in a queue)
/// have come to rest, so two of them read at different moments can be compared exactly.
pub fn settled<T: PartialEq + std::fmt::Debug>(mut read: impl FnMut() -> T) -> Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now == last {
            return Ok(now);
        }
        if std::time::Instant::now() > deadline {
            bail!("still moving after 10 s: {last:?} then {now:?}");
        }
        last = now;
    }
}

/// Held by tests that load the machine (bulk transfers, floods, crowds of scrapers), so that
/// two of them never run at once: each one's exact comparisons then do not depend on what
/// another runs beside it. Tests of one binary run on threads of one process.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut k = [0u8; N];
    // SAFETY: getrandom fills the buffer it is given.
    let n = unsafe { libc::getrandom(k.as_mut_ptr().cast(), k.len(), 0) };
    assert_eq!(n, N as isize, "getrandom");
    k
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tool from PATH, or from cargo's bin directory (where `cargo xtask setup` installs
/// boringtun).
pub fn tool(name: &str) -> Result<String> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .with_context(|| format!("{name} not found (cargo xtask setup installs it)"))
}

/// A daemon stopped by [`Lab::pause`]; continued by [`Paused::resume`] or on drop.
pub struct Paused {
    pid: i32,
    resumed: bool,
}

impl Paused {
    /// Continues the daemon (SIGCONT); returns when the signal was sent.
    pub fn resume(&mut self) -> std::time::Instant {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
        self.resumed = true;
        std::time::Instant::now()
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if !self.resumed {
            self.resume();
        }
    }
}
