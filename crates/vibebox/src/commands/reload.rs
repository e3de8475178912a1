//! `vibebox reload`: applies a changed `[network]` to the running box without
//! a restart, after consent when it grants more.

use vibebox_core::project::Project;
use vibebox_core::text::for_terminal;
use vibebox_supervisor::protocol as control;

use crate::context::Context;
use crate::error::hinted;

/// Runs `vibebox reload`.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    // The config is checked first: a bad one changes nothing, running or not.
    let (source, config) = crate::plan::read_config(&project)?;
    let socket = project.socket_path();
    let session = project.read_session_id()?;
    let (Some(session), Some(_)) = (session, control::status(&socket)) else {
        println!(
            "the box of {} is not running: its next start uses this config",
            project.dir().display()
        );
        return Ok(());
    };
    let hosts = crate::plan::mount_hosts(ctx, &project, &config)?;
    let grants = super::trust::grants(ctx, &project, &config, &hosts);
    super::trust::ensure_accepted(ctx, &project, &session, &grants)?;
    match control::reload(&socket, &source)? {
        Some(r) if r.ok => {
            println!("{}", for_terminal(&r.message));
            Ok(())
        }
        Some(r) => Err(hinted(
            format!("cannot reload: {}", for_terminal(&r.message)),
            "see `vibebox logs`",
        )),
        None => {
            println!(
                "the box of {} stopped meanwhile: its next start uses this config",
                project.dir().display()
            );
            Ok(())
        }
    }
}
