//! Runtime selection: which runtime runs a session, and why.

use std::path::Path;

use vibebox_core::config::RuntimeChoice;
use vibebox_core::explain::RuntimeView;
use vibebox_core::runtime::Runtime;
use vibebox_vm::runtime::VmRuntime;

/// Which runtime would run a session configured with `choice`, and why (in
/// the runtime's own words: KVM or TCG, from the cached probe).
pub fn select(choice: RuntimeChoice, vibebox_home: &Path, probe_exe: &Path) -> RuntimeView {
    let requested = choice.as_str().to_string();
    if choice == RuntimeChoice::Container {
        return RuntimeView {
            requested,
            selected: None,
            reason: "the container runtime is not available yet in this build of vibebox".into(),
        };
    }
    let vm = VmRuntime::new(vibebox_home, probe_exe);
    let a = vm.availability();
    RuntimeView {
        requested,
        selected: a.available.then(|| vm.name().to_string()),
        reason: a.reason,
    }
}
