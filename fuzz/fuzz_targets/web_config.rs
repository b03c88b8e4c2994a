//! The exporter-toolkit web configuration and the listen address: settings or an error
//! naming the key or line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_collector::http::{config::WebConfig, listen::ListenAddress};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Relative certificate paths resolve against a directory that does not exist.
    if let Err(e) = WebConfig::parse(&text, std::path::Path::new("/nonexistent/web.yml")) {
        let _ = e.to_string();
    }
    let _ = text.parse::<ListenAddress>();
});
