//! The host block: the /32 allowed IPs of one IPv4 /16 in an array, indexed by the
//! address's low 16 bits (see wg_common::names::HOST_BLOCK_V4). Gateways number their peers
//! from one subnet, so nearly every packet finds its peer there with an array lookup the
//! verifier inlines; a hash lookup is a helper call and a hash (~30 ns a packet here).
//!
//! The block mirrors the HOSTS_V4 entries of its /16 (the hash keeps them all, so an address
//! the block misses is still found). The /16 is the one holding the most /32s; it moves only
//! when another holds twice as many, and while it moves the programs use the hash. (A
//! program that read the block's place just before a move began may meet an entry already
//! rewritten for the new /16: one packet given to the wrong peer, in a window of
//! microseconds, at a move only.)

use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use wg_common::HostBlockAt;

pub struct HostBlock {
    entries: Array<MapData, u32>,
    at: Array<MapData, HostBlockAt>,
    /// The /16 held now (upper 16 bits), if any.
    high: Option<u16>,
}

fn split(a: Ipv4Addr) -> (u16, u32) {
    let host = u32::from(a);
    ((host >> 16) as u16, host & 0xffff)
}

impl HostBlock {
    /// The block in these maps; which /16 it holds is read back (adopted pins keep theirs).
    pub fn new(entries: Array<MapData, u32>, at: Array<MapData, HostBlockAt>) -> Result<Self> {
        let now = at.get(&0, 0).context("reading the host block's place")?;
        let high = (now.enabled != 0).then_some(now.high as u16);
        Ok(Self { entries, at, high })
    }

    /// The /16 held now.
    pub fn held(&self) -> Option<Ipv4Addr> {
        self.high.map(|h| Ipv4Addr::from((h as u32) << 16))
    }

    /// A /32 allowed IP was added (`slot`) or removed (None): mirrors it if it is in the block.
    pub fn set(&mut self, a: Ipv4Addr, slot: Option<u32>) -> Result<()> {
        let (high, low) = split(a);
        if self.high == Some(high) {
            self.entries.set(low, slot.map_or(0, |s| s + 1), 0).with_context(|| format!("host block entry for {a}"))?;
        }
        Ok(())
    }

    /// Moves the block to the /16 with the most of `hosts` (the /32 allowed IPs and their
    /// slots) if that one holds over twice as many as the block's /16 does.
    pub fn follow(&mut self, hosts: impl Iterator<Item = (Ipv4Addr, u32)> + Clone) -> Result<()> {
        let mut per_block: HashMap<u16, usize> = HashMap::new();
        for (a, _) in hosts.clone() {
            *per_block.entry(split(a).0).or_default() += 1;
        }
        let held = self.high.and_then(|h| per_block.get(&h)).copied().unwrap_or(0);
        let Some((&best, &n)) = per_block.iter().max_by_key(|(h, n)| (**n, std::cmp::Reverse(**h))) else {
            return Ok(());
        };
        if self.high == Some(best) || n <= 2 * held {
            return Ok(());
        }
        // Off while rewritten: the programs use the hash meanwhile.
        self.at.set(0, HostBlockAt { high: 0, enabled: 0 }, 0).context("disabling the host block")?;
        if let Some(old) = self.high.take() {
            for (a, _) in hosts.clone().filter(|(a, _)| split(*a).0 == old) {
                self.entries.set(split(a).1, 0, 0).context("clearing the host block")?;
            }
        }
        for (a, slot) in hosts.filter(|(a, _)| split(*a).0 == best) {
            self.entries.set(split(a).1, slot + 1, 0).context("filling the host block")?;
        }
        self.at.set(0, HostBlockAt { high: best as u32, enabled: 1 }, 0).context("enabling the host block")?;
        self.high = Some(best);
        tracing::debug!(block = %Ipv4Addr::from((best as u32) << 16), hosts = n, "host block moved");
        Ok(())
    }
}
