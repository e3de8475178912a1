//! vibebox-store: workspace saves.
//!
//! `vibebox save` records the project's state — tracked files with their
//! staged and unstaged changes, and the untracked files `.gitignore` does not
//! exclude — as a commit of vibebox's own repository in `.vibebox/save.git`,
//! makes a git bundle of it (incremental on the previous save when the store
//! has that one), checks it with `git bundle verify`, and uploads it to a
//! store: a local directory or S3, through one code path (`object_store`).
//! `vibebox restore` brings a save back into a new directory or, when nothing
//! would be lost, into the project.
//!
//! - [`remote`]: the store (directory or S3), errors a person can act on;
//! - [`entry`]: the store's index, one JSON object per save;
//! - [`workspace`]: vibebox's repository in a project and what a save captures;
//! - [`save`], [`restore`], [`history`]: the three things a person does;
//! - [`git`]: running git on a tree the box can write;
//! - [`aws_profile`]: credentials from `~/.aws` when the environment has none.
//!
//! Nothing is lost on a crash: a bundle is uploaded before its index entry,
//! an entry is written once (a conditional put), and the project's
//! repository only records a save after the store has it.
#![warn(missing_docs)]

pub mod aws_profile;
pub mod entry;
pub mod git;
pub mod history;
pub mod remote;
pub mod restore;
pub mod save;
pub mod workspace;

pub use entry::SaveEntry;
pub use remote::{Remote, RemoteError};

/// A save, a restore or a listing that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The project side failed.
    #[error(transparent)]
    Workspace(#[from] workspace::WorkspaceError),
    /// git failed.
    #[error(transparent)]
    Git(#[from] git::GitError),
    /// An index entry in the store cannot be used.
    #[error(transparent)]
    BadEntry(#[from] entry::BadEntry),
    /// What was asked cannot be done as things are, and nothing was changed.
    #[error("{message}")]
    Refused {
        /// What and why.
        message: String,
        /// What to do.
        help: String,
    },
    /// A bundle from the store is damaged; nothing was restored.
    #[error("save {id} cannot be restored: its bundle is damaged ({why}); nothing was changed")]
    Damaged {
        /// The save.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// Another save or restore of the same project is running.
    #[error("another save or restore of {} is running", project.display())]
    Busy {
        /// The project.
        project: std::path::PathBuf,
    },
}

impl StoreError {
    /// What to do about it, when there is something to say.
    pub fn help(&self) -> Option<String> {
        match self {
            StoreError::Remote(e) => e.help(),
            StoreError::Refused { help, .. } => Some(help.clone()),
            StoreError::Damaged { .. } => Some(
                "restore an earlier save (`vibebox saves` lists them); the damaged one stays in the store"
                    .into(),
            ),
            StoreError::Busy { .. } => Some("wait for it to finish, then try again".into()),
            _ => None,
        }
    }

    pub(crate) fn refused(message: impl Into<String>, help: impl Into<String>) -> StoreError {
        StoreError::Refused {
            message: message.into(),
            help: help.into(),
        }
    }
}

/// What a save or restore tells the person as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A step begins ("uploading 12.3 MB").
    Step(String),
    /// Something the person should know (escaped for a terminal).
    Warning(String),
}

/// Holds the project's save lock (`.vibebox/save.lock`) while it lives.
#[derive(Debug)]
pub struct SaveLock {
    _file: std::fs::File,
}

impl SaveLock {
    /// Takes the lock of the project whose `.vibebox/` is `state`, or says
    /// another save or restore holds it.
    pub fn take(
        project: &std::path::Path,
        state: &std::path::Path,
    ) -> Result<SaveLock, StoreError> {
        let path = state.join("save.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| workspace::WorkspaceError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| StoreError::Busy {
                project: project.to_path_buf(),
            },
        )?;
        Ok(SaveLock { _file: file })
    }
}

/// Bytes for a person: "12.3 MB".
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
