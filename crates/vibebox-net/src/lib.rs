//! vibebox-net: the host side of the guest's network.
//!
//! This crate holds the engine's decisions, independent of any socket:
//! - [`synthetic`]: one private address per allowed name, so a connection maps
//!   back to exactly the name it came from;
//! - [`dns`]: answers the guest's DNS queries from the policy alone (blocked
//!   names get NXDOMAIN and are never sent upstream);
//! - [`ask`]: ask mode: lookups of unlisted names held while the person at
//!   an attached terminal decides;
//! - [`log`]: one JSON object a line per decision, for `.vibebox/logs/network.log`.
//!
//! - [`engine`]: the packet engine on the guest's NIC (smoltcp), relaying
//!   allowed connections through host sockets;
//! - [`sniff`]: classifies what the guest sends to a name before any of it
//!   leaves the host (TLS SNI, every HTTP/1 request's Host, SSH, git);
//! - [`link`]: where frames come from: QEMU's stream, or a TAP / packet
//!   socket (one frame per read);
//! - [`upstream`]: host-side name resolution on a fixed pool and
//!   non-blocking connects.
#![warn(missing_docs)]

pub mod ask;
pub mod dns;
pub mod engine;
pub mod link;
pub mod log;
pub mod sniff;
pub mod synthetic;
pub mod upstream;
