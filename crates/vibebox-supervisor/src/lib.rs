//! vibebox-supervisor: what a session's supervisor is, apart from the machine
//! it runs.
//!
//! - [`protocol`]: the control socket's requests and states, as types, and
//!   the client's side of it (status, attach, stop);
//! - [`lease`]: clients, the grace period and idleness — pure logic;
//! - [`server`]: the control server that serves the protocol from a shared
//!   [`server::Shared`] state.
//!
//! The machine itself (QEMU, later a container) is started by a runtime;
//! the CLI's `__supervise` command wires the two together.
#![warn(missing_docs)]

pub mod lease;
pub mod protocol;
pub mod server;
