//! The loaded programs (BPF_PROG_TEST_RUN, needs root) and the model side by side: every
//! packet of an input goes through both, the program must return "pass on" with the packet
//! unchanged, and then every map the programs write must equal the model's.

use std::fmt;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use wg_collector::bpf::{DeviceProbe, ProbeOptions, ProgramState};
use wg_tests::packets::gso_ctx;

use crate::{
    input::{self, Packet},
    model::Model,
    world,
};

pub struct Harness {
    probe: DeviceProbe,
}

/// Where the programs and the model parted.
#[derive(Debug)]
pub struct Difference {
    /// Index of the packet in the input after which the states differed.
    pub at: usize,
    pub packets: Vec<Packet>,
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "after packet {} of {}: {}", self.at, self.packets.len(), self.what)?;
        for (i, p) in self.packets.iter().enumerate().take(self.at + 1) {
            writeln!(f, "  {i}: {:?} gso {}/{} {:02x?}", p.hook, p.gso_size, p.gso_segs, p.data)?;
        }
        Ok(())
    }
}

impl std::error::Error for Difference {}

impl Harness {
    /// Loads the programs with the world's peers (delay FIFOs off: their timing is not the
    /// parse's; delay_programs.rs tests them).
    pub fn new() -> Result<Self> {
        let opts = ProbeOptions {
            max_peers: world::MAX_PEERS,
            max_pending: world::PENDING_PLACES,
            delay: false,
            latency_sample: 1,
            ..Default::default()
        };
        let mut probe = DeviceProbe::load(opts, None).context("loading the programs (root needed)")?;
        probe.sync(&world::wireguard_peers())?;
        probe.set_listen_port(world::LISTEN_PORT)?;
        Ok(Self { probe })
    }

    /// Runs the packets `data` stands for through the programs and the model, from empty
    /// maps, and returns the state both reached. An error is the harness's own (a map that
    /// cannot be read); a difference is one of the two being wrong.
    pub fn check(&mut self, data: &[u8]) -> Result<Result<ProgramState, Difference>> {
        self.run(input::packets(data))
    }

    pub fn run(&mut self, packets: Vec<Packet>) -> Result<Result<ProgramState, Difference>> {
        self.probe.clear_state()?;
        let mut model = Model::default();
        for (at, p) in packets.iter().enumerate() {
            let differ = |what: String| Ok(Err(Difference { at, packets: packets.clone(), what }));
            let (ret, out) = self.test_run(p)?;
            if ret != wg_common::TC_NEXT as u32 {
                return differ(format!("returned {ret}, not TC_NEXT"));
            }
            if out != p.data {
                return differ("the packet was altered".into());
            }
            model.apply(p);
            let kernel = self.probe.state()?;
            if kernel != model.state {
                return differ(diff(&kernel, &model.state));
            }
        }
        Ok(Ok(model.state))
    }

    /// Empties the maps, as before each input of [`Harness::run`].
    pub fn clear(&mut self) -> Result<()> {
        self.probe.clear_state()
    }

    /// Settles `peer`'s receive session as the collector does when WireGuard's expired.
    pub fn settle(&mut self, peer: &wg_collector::wireguard::Key) -> Result<()> {
        self.probe.settle_peer(peer)
    }

    /// What the programs' maps hold now.
    pub fn state(&self) -> Result<ProgramState> {
        self.probe.state()
    }

    /// Runs `packets[i]` `repeat` times on CPU i, all at once (each thread pinned to its CPU):
    /// the programs' own concurrency, which a model run one packet at a time cannot show.
    pub fn run_on_cpus(&mut self, packets: &[Packet], repeat: u32) -> Result<()> {
        let hook = packets.first().context("no packet")?.hook;
        anyhow::ensure!(packets.iter().all(|p| p.hook == hook), "one hook at a time");
        let prog: &aya::programs::SchedClassifier = self.probe.program(hook.program())?;
        let start = std::sync::Barrier::new(packets.len());
        std::thread::scope(|scope| {
            let runs: Vec<_> = packets
                .iter()
                .enumerate()
                .map(|(cpu, p)| {
                    let start = &start;
                    scope.spawn(move || -> Result<()> {
                        wg_tests::netns::pin_to_cpu(cpu)?;
                        start.wait();
                        let r =
                            prog.test_run(TestRunOptions { data_in: Some(&p.data), repeat, ..Default::default() })?;
                        anyhow::ensure!(r.return_value == wg_common::TC_NEXT as u32, "returned {}", r.return_value);
                        Ok(())
                    })
                })
                .collect();
            runs.into_iter().try_for_each(|t| t.join().map_err(|_| anyhow::anyhow!("a test-run thread panicked"))?)
        })
    }

    /// The kernel's bucket of a sample of `ns` (the program `check_bucket_of`).
    pub fn kernel_bucket_of(&mut self, ns: u64) -> Result<u16> {
        let prog = self.probe.program("check_bucket_of")?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        // A test run wants at least an Ethernet header's worth.
        let mut data = [0u8; 64];
        data[..8].copy_from_slice(&ns.to_le_bytes());
        let r = prog.test_run(TestRunOptions { data_in: Some(&data), ..Default::default() })?;
        u16::try_from(r.return_value).with_context(|| format!("check_bucket_of returned {}", r.return_value as i32))
    }

    fn test_run(&mut self, p: &Packet) -> Result<(u32, Vec<u8>)> {
        let ctx = (p.gso_size > 0 || p.gso_segs > 0).then(|| gso_ctx(p.gso_size, p.gso_segs));
        let mut out = vec![0u8; p.data.len() + 64];
        let r = self.probe.program(p.hook.program())?.test_run(TestRunOptions {
            data_in: Some(&p.data),
            data_out: Some(&mut out),
            ctx_in: ctx.as_deref(),
            ..Default::default()
        });
        let r = r.with_context(|| {
            format!("test run of {:?}, {} bytes, gso {}/{}", p.hook, p.data.len(), p.gso_size, p.gso_segs)
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }
}

/// The fields in which the kernel's state and the model's differ, each side shown.
fn diff(kernel: &ProgramState, model: &ProgramState) -> String {
    let mut s = String::new();
    let mut field = |name: &str, k: String, m: String| {
        if k != m {
            s += &format!("\n  {name}:\n    kernel {k}\n    model  {m}");
        }
    };
    field("counters", format!("{:?}", kernel.counters), format!("{:?}", model.counters));
    field("unattributed", format!("{:?}", kernel.unattributed), format!("{:?}", model.unattributed));
    field("messages", format!("{:?}", kernel.messages), format!("{:?}", model.messages));
    field("invalid", format!("{:?}", kernel.invalid), format!("{:?}", model.invalid));
    field("indices", format!("{:?}", kernel.indices), format!("{:?}", model.indices));
    field("pending", format!("{:?}", kernel.pending), format!("{:?}", model.pending));
    field("samples", format!("{:?}", kernel.samples), format!("{:?}", model.samples));
    field("latency_stats", format!("{:?}", kernel.latency_stats), format!("{:?}", model.latency_stats));
    s
}
