//! The endpoint table (see wg_common::latency::EndpointPlace) as the collector keeps it: the
//! ENDPOINTS hash's content again, each endpoint at the place its hash picks, written into
//! the mapped array where the underlay programs read it.
//!
//! Where endpoints share a place, the one with the smallest words takes it (the same choice
//! whatever order they came in); the others are found through the hash. A place is rewritten
//! with its check cleared first and set last, so the programs never trust a half-written one.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    ptr::addr_of_mut,
    sync::atomic::{fence, Ordering},
};

use wg_common::latency::{Endpoint, EndpointPlace};

use super::mapped::MappedArray;
use crate::wireguard::FastState;

pub struct EndpointPlaces {
    table: MappedArray<EndpointPlace>,
    /// What the table holds now, by place: so a sync writes only the places that change.
    held: HashMap<usize, (Endpoint, u32), FastState>,
}

impl EndpointPlaces {
    /// Takes over the table; an `adopted` one (pinned by an earlier collector) is read back
    /// first. A new one is all zeros: nothing to read.
    pub fn new(table: MappedArray<EndpointPlace>, adopted: bool) -> Self {
        assert!(table.len().is_power_of_two());
        let mut held = HashMap::default();
        for i in (0..table.len()).filter(|_| adopted) {
            // SAFETY: an entry of the mapping; only this collector writes it.
            let p = unsafe { table.entry(i).read_volatile() };
            if p.check != 0 && p.check == EndpointPlace::check_of(p.endpoint.place(), p.slot) {
                held.insert(i, (p.endpoint, p.slot));
            }
        }
        Self { table, held }
    }

    /// Places `endpoints` (endpoint → peer slot, what the hash holds now).
    pub fn follow<S: BuildHasher>(&mut self, endpoints: &HashMap<Endpoint, u32, S>) {
        let mask = self.table.len() - 1;
        let mut wanted: HashMap<usize, (Endpoint, u32), FastState> = HashMap::default();
        for (e, slot) in endpoints {
            let i = e.place() as usize & mask;
            let theirs = wanted.entry(i).or_insert((*e, *slot));
            if e.words() < theirs.0.words() {
                *theirs = (*e, *slot);
            }
        }
        for (i, v) in &wanted {
            if self.held.get(i) != Some(v) {
                self.write(*i, Some(*v));
            }
        }
        for i in self.held.keys() {
            if !wanted.contains_key(i) {
                self.write(*i, None);
            }
        }
        self.held = wanted;
    }

    /// How many endpoints have a place (the rest are found through the hash).
    pub fn placed(&self) -> usize {
        self.held.len()
    }

    fn write(&self, i: usize, v: Option<(Endpoint, u32)>) {
        let p = self.table.entry(i);
        // SAFETY: an entry of the mapping, written only by this collector; volatile, with
        // fences, so the check is cleared before and set after the rest, in that order.
        unsafe {
            addr_of_mut!((*p).check).write_volatile(0);
            fence(Ordering::Release);
            let (endpoint, slot) = v.unwrap_or_default();
            addr_of_mut!((*p).endpoint).write_volatile(endpoint);
            addr_of_mut!((*p).slot).write_volatile(slot);
            fence(Ordering::Release);
            if v.is_some() {
                addr_of_mut!((*p).check).write_volatile(EndpointPlace::check_of(endpoint.place(), slot));
            }
        }
    }
}
