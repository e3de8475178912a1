//! Choosing the runtime that turns a session into a running machine.

use vibebox_core::config::RuntimeChoice;
use vibebox_core::explain::RuntimeView;

/// Which runtime would run a session configured with `choice`, and why.
///
/// No runtime is built in yet: this says so instead of pretending.
pub fn select(choice: RuntimeChoice) -> RuntimeView {
    RuntimeView {
        requested: choice.as_str().to_string(),
        selected: None,
        reason: "no runtime is available yet in this build of vibebox".to_string(),
    }
}
