//! `vibebox` with no command, `vibebox exec`, `vibebox ssh-config`, `vibebox stop`:
//! find or create the project's session, start it when needed, and enter it.

use jiff::Timestamp;
use vibebox_core::config::Config;
use vibebox_core::index::SessionEntry;
use vibebox_core::project::{Project, ProjectError};
use vibebox_core::session::{self, Found};

use crate::attach;
use crate::context::Context;
use crate::control;
use crate::error::hinted;

/// Finds the project, writes the default config when missing, validates the
/// config and connects the session (creating it when needed).
fn prepare(ctx: &Context) -> anyhow::Result<(Project, Config, SessionEntry)> {
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
    if runtime.selected.is_none() {
        return Err(hinted(
            format!("cannot start session {}: {}", entry.id, runtime.reason),
            "`vibebox explain` shows the runtime vibebox would use and why",
        ));
    }
    Ok((project, config, entry))
}

/// Runs `vibebox` with no command: an interactive shell in the box.
pub fn run(ctx: &Context) -> anyhow::Result<i32> {
    let (project, config, entry) = prepare(ctx)?;
    let attached = attach::ensure_running(ctx, &project, &config, entry.id)?;
    attach::run_ssh(&project, &attached, None)
}

/// Runs `vibebox exec -- CMD ARGS…`.
pub fn exec(ctx: &Context, command: &[String]) -> anyhow::Result<i32> {
    let (project, config, entry) = prepare(ctx)?;
    let attached = attach::ensure_running(ctx, &project, &config, entry.id)?;
    let line = command
        .iter()
        .map(|a| attach::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    attach::run_ssh(&project, &attached, Some(format!("exec {line}")))
}

/// Runs `vibebox ssh-config`.
pub fn ssh_config(ctx: &Context) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    let session = project.read_session_id()?;
    let status = control::status(&project.socket_path());
    match (session, status.and_then(|s| s.ssh_port)) {
        (Some(id), Some(port)) => {
            print!("{}", attach::ssh_config_block(&project, &id, port));
            Ok(())
        }
        _ => Err(hinted(
            format!("the box of {} is not running", project.dir().display()),
            "start it with `vibebox` (its SSH port changes at every start)",
        )),
    }
}

/// Runs `vibebox stop`.
pub fn stop(ctx: &Context) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    if control::status(&project.socket_path()).is_none() {
        println!("the box of {} is not running", project.dir().display());
        return Ok(());
    }
    control::stop(&project.socket_path())?;
    println!("stopped the box of {}", project.dir().display());
    Ok(())
}
