//! The supervisor's error: what failed (with its cause in the message), and
//! what to do about it when there is one thing to say.

/// Something the supervisor could not do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SupervisorError {
    /// What failed, and why.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl SupervisorError {
    /// An error with no particular advice.
    pub fn new(message: impl Into<String>) -> SupervisorError {
        SupervisorError {
            message: message.into(),
            help: None,
        }
    }

    /// An error with advice.
    pub fn hinted(message: impl Into<String>, help: impl Into<String>) -> SupervisorError {
        SupervisorError {
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

impl From<vibebox_core::runtime::RuntimeError> for SupervisorError {
    fn from(e: vibebox_core::runtime::RuntimeError) -> SupervisorError {
        SupervisorError::new(e.0)
    }
}

impl From<vibebox_vm::VmError> for SupervisorError {
    fn from(e: vibebox_vm::VmError) -> SupervisorError {
        SupervisorError::new(e.to_string())
    }
}

impl From<std::io::Error> for SupervisorError {
    fn from(e: std::io::Error) -> SupervisorError {
        SupervisorError::new(e.to_string())
    }
}

/// Adds what was being done to an error's message.
pub trait Because<T> {
    /// `what: why`.
    fn because(self, what: impl FnOnce() -> String) -> Result<T, SupervisorError>;
}

impl<T, E: std::fmt::Display> Because<T> for Result<T, E> {
    fn because(self, what: impl FnOnce() -> String) -> Result<T, SupervisorError> {
        self.map_err(|e| SupervisorError::new(format!("{}: {e}", what())))
    }
}
