//! Errors at the edge of the program: what failed, why, and what to do.

use std::fmt;

/// An error with a hint of what to do next.
#[derive(Debug)]
pub struct Hinted {
    /// What failed.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// Builds an `anyhow::Error` with a hint.
pub fn hinted(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        message: message.into(),
        hint: hint.into(),
    })
}

/// Prints `err` for a person: the message, its causes, and the hint if any.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        // Multi-line causes (one problem a line, with help lines) stay aligned.
        for line in cause.to_string().lines() {
            eprintln!("  {line}");
        }
    }
    if let Some(h) = err.chain().find_map(|e| e.downcast_ref::<Hinted>()) {
        eprintln!("  hint: {}", h.hint);
    }
}
