//! Runtime selection: which runtime runs a session, and why.
//!
//! `vm` and `container` take that runtime when it can run here. `auto` takes
//! the VM where the KVM probe passes; where it does not (the VM would run
//! under TCG, 17–27x slower than the host), the container runtime when it can
//! run, else the VM under TCG.

use std::path::Path;

use vibebox_container::runtime::ContainerRuntime;
use vibebox_core::config::RuntimeChoice;
use vibebox_core::explain::RuntimeView;
use vibebox_core::runtime::Runtime;
use vibebox_vm::runtime::VmRuntime;

/// Which runtime would run a session configured with `choice`, and why (in
/// the runtime's own words: KVM or TCG, from the cached probe).
pub fn select(choice: RuntimeChoice, vibebox_home: &Path, exe: &Path) -> RuntimeView {
    let requested = choice.as_str().to_string();
    let view = |r: &dyn Runtime, why: Option<String>| {
        let a = r.availability();
        RuntimeView {
            requested: requested.clone(),
            selected: a.available.then(|| r.name().to_string()),
            reason: match why {
                Some(w) if a.available => format!("{}; {w}", a.reason),
                _ => a.reason,
            },
        }
    };
    let vm = VmRuntime::new(vibebox_home, exe);
    let container = ContainerRuntime::new(exe, vibebox_home);
    match choice {
        RuntimeChoice::Vm => view(&vm, None),
        RuntimeChoice::Container => view(&container, None),
        RuntimeChoice::Auto if vm.verdict().usable => view(&vm, None),
        RuntimeChoice::Auto => {
            let c = view(
                &container,
                Some(format!(
                    "chosen because KVM is not usable here ({})",
                    vm.verdict().reason
                )),
            );
            if c.selected.is_some() {
                return c;
            }
            let v = view(&vm, None);
            RuntimeView {
                reason: format!(
                    "{}; the container runtime cannot run here: {}",
                    v.reason, c.reason
                ),
                ..v
            }
        }
    }
}

/// The runtime called `name` (`vm` or `container`).
pub fn by_name(name: &str, vibebox_home: &Path, exe: &Path) -> Option<Box<dyn Runtime>> {
    match name {
        "vm" => Some(Box::new(VmRuntime::new(vibebox_home, exe))),
        "container" => Some(Box::new(ContainerRuntime::new(exe, vibebox_home))),
        _ => None,
    }
}
