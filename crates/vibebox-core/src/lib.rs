//! vibebox-core: the pure logic of vibebox.
//!
//! - [`boxterm`]: detachable terminals in the box (tmux lines and listings);
//! - [`config`]: `vibebox.toml`, its schema, defaults and precise errors;
//! - [`image`]: base image names (one rule) and their directories;
//! - [`mounts`]: `host:guest[:mode]` strings and their resolution;
//! - [`plan`]: the session plan, resolved once and handed to the supervisor;
//! - [`ports`]: the box's listening ports, and which the host forwards;
//! - [`policy`]: network modes and entries;
//! - [`index`]: the global session index, written atomically under a lock;
//! - [`project`]: a project's directory and `.vibebox/` layout;
//! - [`session`]: finding or creating a project's one session;
//! - [`store`]: where workspace saves go (`[store]`);
//! - [`explain`]: what `vibebox explain` reports;
//! - [`protect`]: the paths of read-write shares the box may read but not write;
//! - [`runtime`]: the `Runtime` trait behind which machines are started;
//! - [`text`]: text from the box or a repository, escaped for a terminal;
//! - [`trust`]: consent for what a config grants beyond the defaults.
//!
//! This crate starts no process and opens no socket.
#![warn(missing_docs)]

pub mod boxterm;
pub mod config;
pub mod diagnostic;
pub mod explain;
pub mod fdpass;
pub mod home;
pub mod image;
pub mod index;
pub mod mounts;
pub mod plan;
pub mod policy;
pub mod ports;
pub mod project;
pub mod protect;
pub mod runtime;
pub mod session;
pub mod store;
pub mod subids;
pub mod text;
pub mod trust;
