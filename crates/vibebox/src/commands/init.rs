//! `vibebox init`: a commented vibebox.toml and .vibebox/ in the current directory.

use jiff::Timestamp;
use vibebox_core::project::{Project, ProjectError};
use vibebox_core::session;

use crate::context::Context;
use crate::error::hinted;

/// Runs `vibebox init`.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let project = Project::at(&ctx.cwd);
    if !project.has_config() {
        // Before the config that names them, so that a concurrent `vibebox`
        // never sees the config without its mount directories.
        super::create_default_mount_dirs(ctx, &project)?;
    }
    match project.write_default_config() {
        Ok(()) => {}
        Err(ProjectError::ConfigExists { path }) => {
            return Err(hinted(
                format!("{} already exists; nothing was changed", path.display()),
                "edit it by hand, or remove it and run `vibebox init` again for the defaults",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    let (entry, _) = session::connect(&ctx.index, &project, Timestamp::now())?;
    println!("created {}", project.config_path().display());
    println!(
        "created {}/ (local state, ignored by git)",
        project.state_dir().display()
    );
    println!("session {}", entry.id);
    println!("next: edit vibebox.toml, then run `vibebox` here");
    Ok(())
}
