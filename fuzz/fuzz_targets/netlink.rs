//! Kernel WireGuard's generic netlink answers: any datagram folds into a device, or is
//! refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_collector::wireguard::netlink::Dump;

fuzz_target!(|data: &[u8]| {
    let mut dump = Dump::new("wg0");
    match dump.take(data) {
        Ok(_) => {
            let _ = dump.device.peers.len();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
