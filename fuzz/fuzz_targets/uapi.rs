//! The UAPI `get=1` answer of a userspace WireGuard: any text gives a device or an error
//! naming the line, never a panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wg_collector::wireguard::{uapi, Implementation};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for imp in [Implementation::WireguardGo, Implementation::Boringtun] {
        if let Err(e) =
            uapi::parse(&text, "/var/run/wireguard/wg0.sock", "wg0", &imp, Duration::from_secs(1_800_000_000))
        {
            let _ = e.to_string();
        }
    }
});
