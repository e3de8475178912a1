//! What every command needs: where the global state is, the user's home, the
//! current directory.

use std::path::PathBuf;

use anyhow::Context as _;
use vibebox_core::home;
use vibebox_core::index::Index;

use crate::error::hinted;

/// The environment a command runs in.
#[derive(Debug)]
pub struct Context {
    /// `VIBEBOX_HOME` (default `~/.vibebox`).
    pub home: PathBuf,
    /// The host user's home, for `~` in mounts.
    pub host_home: PathBuf,
    /// The current directory.
    pub cwd: PathBuf,
    /// The global session index.
    pub index: Index,
    /// `--runtime`, which overrides `[box] runtime`.
    pub runtime: Option<vibebox_core::config::RuntimeChoice>,
}

impl Context {
    /// Reads the environment.
    pub fn from_env() -> anyhow::Result<Context> {
        let host_home = home::host_home().ok_or_else(|| {
            hinted(
                "cannot find your home directory",
                "set HOME, or set VIBEBOX_HOME to where vibebox may keep its state",
            )
        })?;
        let home = home::vibebox_home().unwrap_or_else(|| host_home.join(".vibebox"));
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(Context {
            index: Index::new(&home),
            runtime: None,
            home,
            host_home,
            cwd,
        })
    }
}
