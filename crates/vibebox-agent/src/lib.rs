//! vibebox's exec agent: the wire protocol ([`proto`]) and the host's client
//! ([`client`]). The guest's agent is the `vibebox-agent` binary
//! (`src/main.rs`), which vibebox-image builds into every image.

pub mod client;
pub mod proto;

/// The guest agent's source files, for the image build (compiled there with
/// plain rustc: the agent uses the standard library only).
pub const GUEST_SOURCES: &[(&str, &str)] = &[
    ("main.rs", include_str!("main.rs")),
    ("proto.rs", include_str!("proto.rs")),
];
