//! Kernel WireGuard's generic netlink answers: any datagram decodes into messages that fold
//! into a device, or into an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::WireguardMessage;
use wg_collector::wireguard::netlink;

fuzz_target!(|data: &[u8]| {
    let mut out: Vec<GenlMessage<WireguardMessage>> = Vec::new();
    match netlink::decode(data, "wg0", &mut out) {
        Ok(_) => {
            let dev = netlink::fold("wg0", out.into_iter().map(|m| m.payload));
            let _ = dev.peers.len();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
