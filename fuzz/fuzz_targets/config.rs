//! `vibebox.toml` parsing must never panic, whatever the bytes.
//! Run: `cargo +nightly fuzz run config` (from this directory's parent).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vibebox_core::config::Config::parse(text, std::path::Path::new("vibebox.toml"));
    }
});
