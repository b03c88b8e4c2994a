//! Names files ("public-key name" per line) and wg-quick configurations with
//! friendly_name comments: names or an error naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_collector::names::{parse_names_file, parse_wg_config};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = parse_names_file(&text, "/etc/wg-collector/names") {
        let _ = e.to_string();
    }
    let _ = parse_wg_config(&text);
});
