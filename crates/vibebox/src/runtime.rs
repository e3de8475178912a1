//! Choosing the runtime that turns a session into a running machine.

use vibebox_core::config::RuntimeChoice;
use vibebox_core::explain::RuntimeView;
use vibebox_core::runtime::Runtime;
use vibebox_vm::runtime::VmRuntime;

use crate::context::Context;

/// Which runtime would run a session configured with `choice`, and why (in
/// the runtime's own words: KVM or TCG, from the cached probe).
pub fn select(ctx: &Context, choice: RuntimeChoice) -> RuntimeView {
    let requested = choice.as_str().to_string();
    if choice == RuntimeChoice::Container {
        return RuntimeView {
            requested,
            selected: None,
            reason: "the container runtime is not available yet in this build of vibebox".into(),
        };
    }
    let vm = VmRuntime::new(&ctx.home, &crate::supervisor::probe_exe());
    let a = vm.availability();
    RuntimeView {
        requested,
        selected: a.available.then(|| vm.name().to_string()),
        reason: a.reason,
    }
}
