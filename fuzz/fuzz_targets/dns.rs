//! The engine's DNS answers must never panic on a packet from the guest.
//! Run: `cargo +nightly fuzz run dns`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vibebox_core::policy::{NetworkEntry, NetworkMode, Policy};
use vibebox_net::synthetic::SyntheticPool;

fuzz_target!(|data: &[u8]| {
    let policy = Policy::new(
        NetworkMode::Allowlist,
        ["github.com", "*.npmjs.org"]
            .iter()
            .filter_map(|e| NetworkEntry::parse(e).ok())
            .collect(),
    );
    let mut pool = SyntheticPool::with_capacity(16);
    let _ = vibebox_net::dns::answer(data, &policy, &mut pool);
});
