//! vibebox-vm: the QEMU runtime of vibebox.
//!
//! - [`kvm`]: measures whether KVM is usable;
//! - [`qemu`]: builds QEMU's command line from a validated machine description;
//! - [`disk`]: instance disks (copy-on-write overlays on a base image);
//! - [`virtiofs`]: one virtiofsd per mount, read-only enforced on the host;
//! - [`ssh`]: per-project keys and the pinned guest host key;
//! - [`process`]: child processes that die with the supervisor;
//! - [`template`]: new sessions that resume a saved first boot of their image;
//! - [`runtime`]: [`runtime::VmRuntime`], the QEMU runtime behind
//!   `vibebox_core::runtime::Runtime`.
#![warn(missing_docs)]

pub mod disk;
pub mod guest;
pub mod kvm;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod runtime;
pub mod snapshot;
pub mod ssh;
pub mod template;
pub mod virtiofs;

/// Errors of the VM runtime.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Preparing the machine (keys, disk, helpers) failed.
    #[error("{0}")]
    Setup(String),
}
