//! Kernel speed: the WireGuard-interface programs on an L3 kernel device, driven at one CPU's
//! limit. This kernel has no ipip, gre or sit (and no WireGuard module), so the device is a
//! TUN device in L3 mode, which TC sees as it sees WireGuard's interface (packets start at the
//! IP header). A sendmmsg blaster pinned to one CPU sends 64-byte UDP datagrams round-robin
//! to 1,000 or 10,000 destination /32s routed into it, each a peer's allowed IP in the maps;
//! nobody reads the TUN device, so every datagram runs the whole send path, the egress hook
//! included, and is dropped where WireGuard would encrypt it. The variants alternate (none,
//! counting, everything, ...); packets/s are the blaster's, medians of the repetitions; ns per
//! packet is the difference of 1/pps against no programs.
//!
//! What this cannot show: the receive side (a TUN device's packets come from userspace
//! writes, a syscall each) and the encap FIFO's partner on the underlay (no underlay here, so
//! with everything on the FIFO overflows at every packet: the push and the overflow path).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::programs::TcAttachType;
use wg_common::names;
use wg_tests::{
    lab::PREFIX,
    netns::{self, sh},
};

use crate::{median, peer_addr, probe};

const TUN: &str = "wgtun0";
const PAYLOAD: usize = 64;
/// Datagrams per sendmmsg.
const BATCH: usize = 64;
/// The blaster's CPU (the other one keeps the rest of the machine).
const CPU: usize = 1;

/// A namespace with a TUN device (its file held open, so it has carrier) and routes for the
/// destinations; deleted on drop.
struct Bench {
    ns: String,
    _tun: File,
}

impl Bench {
    fn new(peers: u32) -> Result<Self> {
        let ns = format!("{PREFIX}{}xkfwd", std::process::id());
        sh(&["ip", "netns", "add", &ns])?;
        let bench = |ns: String| -> Result<Self> {
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            let tun = netns::within(&ns, || open_tun(TUN))?;
            sh(&["ip", "-n", &ns, "addr", "add", "10.63.0.1/32", "dev", TUN])?;
            sh(&["ip", "-n", &ns, "link", "set", TUN, "up"])?;
            let last = peer_addr(peers - 1);
            anyhow::ensure!(last.octets()[1] == 64, "the destinations fit 10.64.0.0/16");
            sh(&["ip", "-n", &ns, "route", "add", "10.64.0.0/16", "dev", TUN])?;
            Ok(Self { ns, _tun: tun })
        };
        bench(ns.clone()).inspect_err(|_| {
            let _ = sh(&["ip", "netns", "del", &ns]);
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

/// Opens /dev/net/tun as `name`, L3 without packet information (as WireGuard's interface is).
fn open_tun(name: &str) -> Result<File> {
    let file = File::options().read(true).write(true).open("/dev/net/tun").context("opening /dev/net/tun")?;
    // SAFETY: a zeroed ifreq with the name and flags set, for TUNSETIFF on a tun fd.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        if libc::ioctl(file.as_raw_fd(), TUNSETIFF, &req) != 0 {
            bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// Sends to the `peers` destinations round-robin for `secs` from CPU [`CPU`] inside `ns`
/// from `from`, as fast as it can or at `pps`; returns datagrams sent per second.
pub(crate) fn blast(ns: &str, from: Ipv4Addr, peers: u32, secs: f64, pps: Option<f64>) -> Result<f64> {
    netns::within(ns, move || {
        netns::pin_to_cpu(CPU)?;
        let sock = std::net::UdpSocket::bind((from, 0))?;
        let addrs: Vec<libc::sockaddr_in> = (0..peers)
            .map(|i| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 9u16.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(peer_addr(i)).to_be() },
                sin_zero: [0; 8],
            })
            .collect();
        let payload = [0x5au8; PAYLOAD];
        let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: PAYLOAD };
        // SAFETY: zeroed mmsghdr, every pointer set below to memory that outlives the calls.
        let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
        let (mut next, mut sent) = (0usize, 0u64);
        let t0 = Instant::now();
        let until = Duration::from_secs_f64(secs);
        while t0.elapsed() < until {
            if let Some(pps) = pps {
                let due = Duration::from_secs_f64(sent as f64 / pps);
                if let Some(wait) = due.checked_sub(t0.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            for m in msgs.iter_mut() {
                m.msg_hdr.msg_name = &addrs[next] as *const libc::sockaddr_in as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                next = (next + 1) % addrs.len();
            }
            // SAFETY: `msgs` holds BATCH initialized headers.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // A full queue: count nothing, go on.
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    bail!("sendmmsg: {e}");
                }
                continue;
            }
            sent += n as u64;
        }
        Ok(sent as f64 / t0.elapsed().as_secs_f64())
    })
}

/// A probe attached inside `ns`, held by a thread of its own there (a probe attaches in its
/// thread's namespace); detached when finished or dropped.
pub(crate) struct Attached {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Result<Stats>>>,
}

/// The kernel's accounting of the egress program while attached (zero unless bpf stats are
/// on): runs and nanoseconds in it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Stats {
    pub runs: u64,
    pub ns: u64,
}

impl Attached {
    /// The TUN device's programs (`v`), or the empty one.
    fn new(ns: &str, peers: u32, v: Variant) -> Result<Self> {
        Self::at(ns, peers, v, &[(TUN, TcAttachType::Egress)])
    }

    /// The empty program at each of `hooks` (a wire packet's hooks: one program, so its
    /// accounting is their sum), or with another variant `v`'s programs on the device of the
    /// first hook.
    pub(crate) fn at(ns: &str, peers: u32, v: Variant, hooks: &[(&str, TcAttachType)]) -> Result<Self> {
        let (ready_tx, ready) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let ns = ns.to_string();
        let hooks: Vec<(String, TcAttachType)> = hooks.iter().map(|(i, t)| (i.to_string(), *t)).collect();
        let thread = std::thread::spawn(move || -> Result<Stats> {
            let run = || -> Result<_> {
                netns::enter(&ns)?;
                let mut p = probe(peers, matches!(v, Variant::Everything))?;
                let egress = match v {
                    // The hook's own cost: a program that does nothing (or the least that
                    // counts), attached the same way.
                    Variant::Empty | Variant::Floor | Variant::Reading => {
                        let bare = match v {
                            Variant::Empty => "bench_noop",
                            Variant::Floor => "bench_floor",
                            _ => "bench_read",
                        };
                        for (iface, hook) in &hooks {
                            p.program(bare)?.attach(iface, *hook)?;
                        }
                        bare
                    }
                    _ => {
                        p.attach(&hooks[0].0)?;
                        names::PROG_EGRESS
                    }
                };
                Ok((p, egress))
            };
            match run() {
                Ok((mut p, egress)) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stopped.recv();
                    let info = p.program(egress)?.info()?;
                    Ok(Stats { runs: info.run_count(), ns: info.run_time().as_nanos() as u64 })
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    Err(e)
                }
            }
        });
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { stop: Some(stop), thread: Some(thread) }),
            Ok(Err(e)) => bail!("attaching the programs: {e}"),
            Err(_) => bail!("the attaching thread ended"),
        }
    }

    /// Detaches; the egress program's accounting meanwhile.
    pub(crate) fn finish(mut self) -> Result<Stats> {
        drop(self.stop.take());
        let t = self.thread.take().expect("joined once");
        t.join().map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    None,
    Empty,
    Counting,
    Everything,
    /// Everything on at the setting README advises a busy gateway (the per-wire-packet
    /// table only).
    Sampled,
    /// One per-CPU counter up by one (`bench_floor`), at the hooks the empty program takes
    /// (the per-wire-packet table only).
    Floor,
    /// The floor after reading what any counting reads of its packet (`bench_read`: length,
    /// GSO size, a word of the header), at the same hooks (the per-wire-packet table only).
    Reading,
    /// Counting by the build $WG_BENCH_COLLECTOR_BEFORE names (the per-wire-packet table,
    /// when set).
    CountingBefore,
    /// Counting on the WireGuard interface alone, nothing on the underlay (the
    /// per-wire-packet table only).
    PlaintextOnly,
}

impl Variant {
    const ALL: [Variant; 4] = [Self::None, Self::Empty, Self::Counting, Self::Everything];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::None => "no programs",
            Self::Empty => "an empty program (the hook's own cost)",
            Self::Counting => "counting (--latency.no-delay)",
            Self::Everything => "everything on (the defaults)",
            Self::Sampled => "everything, one packet in 64 sampled (--latency.sample 64)",
            Self::Floor => "one counter up by one, nothing parsed (the floor)",
            Self::Reading => "the floor after reading the packet's length, GSO size and a header word",
            Self::CountingBefore => "counting, $WG_BENCH_COLLECTOR_BEFORE's build",
            Self::PlaintextOnly => "counting on the WireGuard interface alone (--underlay none)",
        }
    }
}

/// One blast with `v` attached (none: nothing): packets/s and the egress program's stats.
fn measure(ns: &str, peers: u32, v: Variant, secs: f64) -> Result<(f64, Stats)> {
    let attached = match v {
        Variant::None => None,
        _ => Some(Attached::new(ns, peers, v)?),
    };
    let pps = blast(ns, Ipv4Addr::new(10, 63, 0, 1), peers, secs, None)?;
    let stats = attached.map(Attached::finish).transpose()?.unwrap_or_default();
    Ok((pps, stats))
}

pub fn run(quick: bool) -> Result<()> {
    let (counts, reps, secs): (&[u32], usize, f64) =
        if quick { (&[1000], 1, 0.5) } else { (&[1, 1000, 10_000], 5, 3.0) };
    println!("| destinations (peers) | variant | packets/s (median) | loss against none | ns per packet (1/pps difference) | ns per run inside the egress program (bpf stats, net of the empty one) |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &n in counts {
        let bench = Bench::new(n)?;
        let mut pps: [Vec<f64>; 4] = Default::default();
        for _ in 0..reps {
            for (i, v) in Variant::ALL.into_iter().enumerate() {
                pps[i].push(measure(&bench.ns, n, v, secs)?.0);
            }
        }
        // Again with bpf stats on (they cost two clock reads a run, so not in the rates):
        // the time inside each program, less the empty program's.
        let mut inside = [0f64; 4];
        {
            let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling bpf stats")?;
            for (i, v) in Variant::ALL.into_iter().enumerate().skip(1) {
                let per_run: Vec<f64> = (0..reps.min(3))
                    .map(|_| measure(&bench.ns, n, v, secs).map(|(_, s)| s.ns as f64 / s.runs.max(1) as f64))
                    .collect::<Result<_>>()?;
                inside[i] = median(per_run);
            }
        }
        let none = median(pps[0].clone());
        for (i, v) in Variant::ALL.into_iter().enumerate() {
            let m = median(pps[i].clone());
            let (loss, ns) = ((1.0 - m / none) * 100.0, (1.0 / m - 1.0 / none) * 1e9);
            let inside = match v {
                Variant::None => "".to_string(),
                Variant::Empty => format!("{:.0} (its own)", inside[1]),
                _ => format!("{:.0}", inside[i] - inside[1]),
            };
            println!("| {n} | {} | {:.0} | {loss:.1} % | {ns:.0} | {inside} |", v.label(), m);
        }
    }
    Ok(())
}
