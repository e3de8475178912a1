//! vibebox-net: the host side of the guest's network.
//!
//! This crate holds the engine's decisions, independent of any socket:
//! - [`synthetic`]: one private address per allowed name, so a connection maps
//!   back to exactly the name it came from;
//! - [`dns`]: answers the guest's DNS queries from the policy alone (blocked
//!   names get NXDOMAIN and are never sent upstream);
//! - [`log`]: one JSON object a line per decision, for `.vibebox/logs/network.log`.
//!
//! - [`engine`]: the packet engine on the guest's NIC (smoltcp), relaying
//!   allowed connections through host sockets;
//! - [`sniff`]: the TLS SNI or HTTP Host a connection's first bytes claim.
#![warn(missing_docs)]

pub mod dns;
pub mod engine;
pub mod log;
pub mod sniff;
pub mod synthetic;
