//! Differential testing of the kernel programs (wg-ebpf): every packet goes through the loaded
//! programs with BPF_PROG_TEST_RUN and through a userspace reference model of the same parse,
//! and every map the programs write is compared with the model's after every packet.
//!
//! The model is written from the protocol (../shared/docs/wireguard-wire.md) and from the
//! programs' documented choices (what is counted where, which headers are followed, the limits
//! of the option walk), not from their code: where the two disagree, one of them is wrong, and
//! which one is decided case by case (fuzz/RESULTS.md lists every difference found).
//!
//! - [`world`]: the peers both sides know (allowed IPs, endpoints, the listen port).
//! - [`input`]: arbitrary bytes → a sequence of packets, most of them close to real ones.
//! - [`model`]: what the programs should do to their maps for each packet (path.rs: the
//!   receive sessions' windows, from their definitions).
//! - [`harness`]: the loaded programs, the model beside them, and the comparison.

pub mod harness;
pub mod input;
pub mod model;
pub mod world;

mod path;
mod pending;
mod plain;
mod underlay;
