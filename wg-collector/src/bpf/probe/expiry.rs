//! Sessions that end without a successor. A receive session's window is settled when the
//! peer's next session starts (in the kernel); a peer that goes quiet has no next session,
//! and its last window would wait for one forever. WireGuard rejects a session's messages
//! REJECT_AFTER_TIME (180 s) after its handshake, so once a peer's last handshake is older
//! than that (and a margin), nothing of its session can arrive any more: the collector has
//! the kernel settle it, once per handshake, by running `wg_path_settle` with the peer's slot
//! (BPF_PROG_TEST_RUN, so the window is changed under its lock like every other change).

use std::time::Duration;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use wg_common::names;

use super::DeviceProbe;
use crate::wireguard::Peer;

/// WireGuard's REJECT_AFTER_TIME, and a margin for clocks and late datagrams.
pub const SESSION_EXPIRED_AFTER: Duration = Duration::from_secs(180 + 10);

/// Whether the session of a peer whose last handshake was at `handshake` (Unix time) has
/// expired at `now` and was not settled yet (`settled`: the handshake last settled for).
pub fn expired(handshake: Option<Duration>, now: Duration, settled: Option<Duration>) -> bool {
    match handshake {
        Some(h) if h > Duration::ZERO => settled != Some(h) && now.saturating_sub(h) > SESSION_EXPIRED_AFTER,
        _ => false,
    }
}

impl DeviceProbe {
    /// Settles the sessions of `peers` that have expired at `now` (Unix time). A settling
    /// that fails is logged and not tried again for that handshake: it costs the counts of
    /// one window, never the device's sync.
    pub(super) fn settle_expired(&mut self, peers: &[Peer], now: Duration) {
        for p in peers {
            let settled = self.synced.settled.get(&p.public_key).copied();
            if !expired(p.last_handshake, now, settled) {
                continue;
            }
            let Some(slot) = self.synced.slots.get(&p.public_key) else { continue };
            if let Err(e) = self.settle(slot) {
                tracing::warn!(peer = %p.public_key, "{e:#}");
            }
            self.synced.settled.insert(p.public_key, p.last_handshake.unwrap_or_default());
        }
        self.synced.settled.retain(|k, _| self.synced.slots.get(k).is_some());
    }

    /// Settles the receive session of `peer` now (tests; the daemon settles on expiry).
    pub fn settle_peer(&mut self, peer: &crate::wireguard::Key) -> Result<()> {
        let slot = self.synced.slots.get(peer).context("the peer has no slot")?;
        self.settle(slot)
    }

    /// Settles the receive session of `slot` now.
    fn settle(&mut self, slot: u32) -> Result<()> {
        // A test run takes at least an Ethernet header's worth of bytes.
        let mut data = [0u8; 14];
        data[..4].copy_from_slice(&slot.to_le_bytes());
        self.program(names::PROG_PATH_SETTLE)?
            .test_run(TestRunOptions { data_in: Some(&data), ..Default::default() })
            .with_context(|| format!("settling the receive session of slot {slot}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_settled_once_after_it_expired() {
        let s = Duration::from_secs;
        let h = Some(s(1_000_000));
        assert!(!expired(h, s(1_000_000 + 190), None), "190 s: WireGuard may still take it");
        assert!(expired(h, s(1_000_000 + 191), None));
        assert!(!expired(h, s(1_000_000 + 500), h), "already settled for this handshake");
        assert!(expired(Some(s(1_000_400)), s(1_000_700), h), "a later handshake, expired too");
        assert!(!expired(None, s(1_000_700), None), "never shook hands");
        assert!(!expired(Some(Duration::ZERO), s(1_000_700), None));
    }
}
