//! Questions and answers (wg_common::latency::PendingEntry): a direct-mapped table where a
//! question waits at the place its key hashes to; the same question again keeps the first
//! one's time, another question at that place displaces it; the first matching answer takes
//! it and makes one sample. (The place is the shared hash, part of the maps' contract.)

use wg_collector::bpf::Owner;
use wg_common::latency::{stats, Kind, PendingKey};

use crate::{model::Model, world::PENDING_PLACES};

fn place(k: &PendingKey) -> u32 {
    k.place() & (PENDING_PLACES - 1)
}

impl Model {
    pub(crate) fn question(&mut self, k: PendingKey) {
        let at = place(&k);
        match self.state.pending.get(&at) {
            Some(waiting) if *waiting == k => return,
            Some(_) => self.stat(stats::DISPLACED),
            None => {}
        }
        self.state.pending.insert(at, k);
        self.stat(stats::RECORDED);
    }

    pub(crate) fn answer(&mut self, k: PendingKey, owner: Owner, kind: Kind) {
        let at = place(&k);
        if self.state.pending.get(&at) != Some(&k) {
            return;
        }
        self.state.pending.remove(&at);
        self.stat(stats::MATCHED);
        *self.state.samples.entry((owner, kind as u16)).or_default() += 1;
    }
}

/// A key with addresses and ports as seen on the way out (local, remote).
pub(crate) fn key(kind: Kind, value: u32, local: [u8; 16], remote: [u8; 16], ports: (u16, u16)) -> PendingKey {
    PendingKey { local, remote, local_port: ports.0, remote_port: ports.1, kind: kind as u16, _pad: 0, value }
}
