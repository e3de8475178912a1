//! `vibebox` with no command: find or create the project's session and enter it.

use jiff::Timestamp;
use vibebox_core::project::{Project, ProjectError};
use vibebox_core::session::{self, Found};

use crate::context::Context;
use crate::error::hinted;

/// Runs `vibebox` with no command.
pub fn run(ctx: &Context) -> anyhow::Result<i32> {
    let project = Project::find(&ctx.cwd);
    if !project.has_config() {
        match project.write_default_config() {
            Ok(()) => {
                eprintln!(
                    "vibebox: created {} with the defaults",
                    project.config_path().display()
                );
                super::create_default_mount_dirs(ctx, &project)?;
            }
            // Another vibebox created it at the same moment: use theirs.
            Err(ProjectError::ConfigExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let config = super::load_config(&project)?;
    config
        .check_mount_hosts(&project.config_path(), &ctx.host_home, project.dir())
        .map_err(|p| {
            anyhow::Error::new(p)
                .context("a mount of vibebox.toml cannot be used; nothing was started")
        })?;
    let (entry, found) = session::connect(&ctx.index, &project, Timestamp::now())?;
    match found {
        Found::Created => eprintln!("vibebox: new session {}", entry.id),
        Found::Moved { from } => eprintln!(
            "vibebox: session {} moved here from {}",
            entry.id,
            from.display()
        ),
        Found::Copied { original } => eprintln!(
            "vibebox: this directory is a copy of the project of session {original}; it gets its own new session {}",
            entry.id
        ),
        Found::Existing | Found::Registered => {}
    }
    let runtime = crate::runtime::select(config.runtime);
    match runtime.selected {
        Some(_) => Ok(0),
        None => Err(hinted(
            format!("cannot start session {}: {}", entry.id, runtime.reason),
            "`vibebox explain` shows what the session will see once a runtime can start it",
        )),
    }
}
