//! The container runtime of vibebox: the box as a crun container in a user
//! namespace, at host speed where KVM is not usable. It shares the host's
//! kernel (the VM does not); see docs/container-runtime.md.
//!
//! - [`bundle`]: the OCI `config.json` made from a session plan;
//! - [`stage`]: the runtime's half inside the namespaces (overlay root, NIC,
//!   crun);
//! - [`rootfs`]: the image's root tree, unpacked once per image;
//! - [`runtime`]: [`runtime::ContainerRuntime`], the `Runtime` it implements;
//! - [`cgroup`]: `cpu_count` and `ram_mb` as the box's own cgroup.

pub mod bundle;
pub mod cgroup;
pub mod rootfs;
pub mod runtime;
pub mod stage;
