//! vibebox-supervisor: what a session's supervisor is, apart from the machine
//! it runs.
//!
//! - [`protocol`]: the control socket's requests and states, as types, and
//!   the client's side of it (status, attach, stop);
//! - [`lease`]: clients, the grace period and idleness — pure logic;
//! - [`server`]: the control server that serves the protocol from a shared
//!   [`server::Shared`] state;
//! - [`supervise`]: one session's supervisor — control server, network
//!   engine, the machine through its runtime, the shared SSH connection, the
//!   lease — from the plan the client checked;
//! - [`select`]: which runtime runs a session, and why;
//! - [`rundir`]: where a session's sockets live (verified private);
//! - [`guest`]: what the supervisor asks the box over SSH (are terminals running);
//! - [`ports`]: automatic port forwards of what the box listens on;
//! - [`reload`]: a changed `[network]` applied to the running box;
//! - [`ask`]: ask mode's answers ("allow always" written to vibebox.toml);
//! - [`moves`]: the index following a project that moves while its box runs.
//!
//! The machine itself is started by a runtime (`vibebox_core::runtime`); the
//! CLI's `__supervise` command only reads the plan and calls [`supervise`].
#![warn(missing_docs)]

pub mod ask;
pub mod error;
pub mod guest;
pub mod lease;
pub mod moves;
pub mod ports;
pub mod protocol;
pub mod reload;
pub mod rundir;
pub mod select;
pub mod server;
pub mod supervise;

pub use error::SupervisorError;
pub use supervise::{supervise, Host, SaveHook};
