//! Choosing the runtime that turns a session into a running machine.

use vibebox_core::config::RuntimeChoice;
use vibebox_core::explain::RuntimeView;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Which runtime would run a session configured with `choice`, and why.
///
/// Only the VM runtime exists so far; it runs under KVM when the probe says
/// KVM is usable, else under TCG (see [`crate::supervisor::kvm_verdict`]).
pub fn select(choice: RuntimeChoice) -> RuntimeView {
    let requested = choice.as_str().to_string();
    if choice == RuntimeChoice::Container {
        return RuntimeView {
            requested,
            selected: None,
            reason: "the container runtime is not available yet in this build of vibebox".into(),
        };
    }
    if !on_path("qemu-system-x86_64") {
        return RuntimeView {
            requested,
            selected: None,
            reason: "qemu-system-x86_64 is not installed (run scripts/install-deps)".into(),
        };
    }
    RuntimeView {
        requested,
        selected: Some("vm".into()),
        reason: "QEMU micro-VM".into(),
    }
}
