//! The kernel side as the collector sees it: the embedded wg-ebpf object, loaded and
//! attached once per WireGuard device, and the maps kept in sync with the device's peers.

mod batch;
mod endpoint_places;
mod host_block;
pub mod kernel;
mod mapped;
mod pending;
mod pins;
mod probe;
mod slots;

pub use pins::{ensure_bpffs, sweep, PinDir, PinOptions, DEFAULT_PIN_ROOT};
pub use probe::{
    detach_clsact, monotonic_ns, DeviceProbe, LatencyStats, Owner, ProbeOptions, ProgramState, ProgramStats, Reading,
};
pub use slots::SlotTable;

/// The wg-ebpf object built by build.rs.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wg-ebpf.o"))
}
