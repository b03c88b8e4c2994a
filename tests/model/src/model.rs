//! What the programs should leave in their maps, packet by packet, kept as the same
//! [`ProgramState`] the collector reads from the kernel, so the two compare directly.

use wg_collector::bpf::{Owner, ProgramState};
use wg_common::{
    latency::stats,
    protocol::{Invalid, MessageType},
    unattributed_index, Unattributed, DIRECTIONS, DIR_RX, DIR_TX,
};

use crate::input::{Hook, Packet};

#[derive(Default)]
pub struct Model {
    pub state: ProgramState,
    /// Each peer's receive sessions (path.rs): the programs keep them in a map the state
    /// leaves out; what they count is in the peers' counters.
    pub(crate) sessions: std::collections::BTreeMap<wg_collector::wireguard::Key, crate::path::Peer>,
}

impl Model {
    pub fn apply(&mut self, p: &Packet) {
        match p.hook {
            Hook::PlainIngress => crate::plain::observe(self, DIR_RX, p),
            Hook::PlainEgress => crate::plain::observe(self, DIR_TX, p),
            Hook::UnderIngress => crate::underlay::observe(self, DIR_RX, p),
            Hook::UnderEgress => crate::underlay::observe(self, DIR_TX, p),
        }
    }

    /// Plaintext packets and bytes for a peer, or unattributed for `reason`.
    pub(crate) fn plaintext(
        &mut self,
        dir: usize,
        peer: Result<wg_collector::wireguard::Key, Unattributed>,
        packets: u64,
        bytes: u64,
    ) {
        let c = match peer {
            Ok(k) => &mut self.state.counters.entry(k).or_default().dir[dir],
            Err(reason) => {
                let i = unattributed_index(dir, reason) as usize;
                &mut self.state.unattributed[i / Unattributed::ALL.len()][i % Unattributed::ALL.len()]
            }
        };
        c.packets += packets;
        c.bytes += bytes;
    }

    /// `n` underlay messages of type `t`: a peer's data messages are kept with its counters,
    /// everything else (and the device's data) in the message counts.
    pub(crate) fn message(&mut self, owner: Owner, dir: usize, t: MessageType, n: u64) {
        debug_assert!(dir < DIRECTIONS);
        match owner {
            Some(k) if t == MessageType::Data => self.state.counters.entry(k).or_default().data_messages[dir] += n,
            _ => self.state.messages.entry(owner).or_default().counts[dir][t as usize] += n,
        }
    }

    pub(crate) fn invalid(&mut self, reason: Invalid) {
        self.state.invalid[reason as usize] += 1;
    }

    pub(crate) fn stat(&mut self, i: u32) {
        debug_assert!(i < stats::ENTRIES);
        self.state.latency_stats[i as usize] += 1;
    }
}
