//! `vibebox trust` and the consent every start asks for.
//!
//! What a project's `vibebox.toml` grants beyond the defaults (host paths,
//! network widening, resolver overrides, exposed ports, fewer protected
//! paths) is applied only once the person at the host accepted it. The record
//! lives in `$VIBEBOX_HOME/trust/`, keyed by the session id: outside the
//! project tree, hidden from every share, and it follows a moved project.

use std::path::PathBuf;

use uuid::Uuid;
use vibebox_core::config::Config;
use vibebox_core::project::Project;
use vibebox_core::text::for_terminal;
use vibebox_core::trust::{widening, Grants, TrustStore, Widening};

use crate::context::Context;
use crate::error::hinted;
use crate::terminal;

/// What `config` grants, with its mounts at their real `hosts`.
pub fn grants(ctx: &Context, project: &Project, config: &Config, hosts: &[PathBuf]) -> Grants {
    let protect = crate::plan::protect_paths(ctx, project, config);
    Grants::of(config, hosts, &protect, project.dir())
}

/// What `grants` adds to what was accepted for `session` (or to the defaults).
pub fn pending(ctx: &Context, session: &Uuid, grants: &Grants) -> anyhow::Result<Vec<Widening>> {
    let accepted = TrustStore::new(&ctx.home).accepted(session)?;
    Ok(widening(
        grants,
        accepted.as_ref(),
        &Grants::defaults(&ctx.host_home),
    ))
}

fn print_pending(project: &Project, pending: &[Widening]) {
    eprintln!(
        "vibebox: {} grants the box more than you have accepted:",
        for_terminal(&project.config_path().display().to_string())
    );
    for w in pending {
        eprintln!("  {}", for_terminal(&w.to_string()));
    }
}

/// Before a start: asks the person at the host terminal to accept what the
/// config grants beyond what was accepted; refuses without a terminal.
pub fn ensure_accepted(
    ctx: &Context,
    project: &Project,
    session: &Uuid,
    grants: &Grants,
) -> anyhow::Result<()> {
    let pending = pending(ctx, session, grants)?;
    if pending.is_empty() {
        return Ok(());
    }
    print_pending(project, &pending);
    let dir = for_terminal(&project.dir().display().to_string());
    if !terminal::can_ask() {
        return Err(hinted(
            format!(
                "the config of {dir} grants what you have not accepted; nothing was started"
            ),
            format!(
                "review vibebox.toml, then run `vibebox trust` in {dir} (or start vibebox at a terminal to be asked)"
            ),
        ));
    }
    if !terminal::confirm("Accept these and start the box?")? {
        return Err(hinted(
            "you did not accept the config; nothing was started",
            "change vibebox.toml, or run `vibebox trust` when you accept it",
        ));
    }
    TrustStore::new(&ctx.home).accept(session, project.dir(), grants)?;
    Ok(())
}

/// Runs `vibebox trust [--yes]`.
pub fn run(ctx: &Context, yes: bool) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    if !project.has_config() {
        return Err(hinted(
            format!(
                "{} has no vibebox.toml: there is nothing to trust",
                for_terminal(&project.dir().display().to_string())
            ),
            "run `vibebox` or `vibebox init` to write the defaults (which need no consent)",
        ));
    }
    let (_, config) = crate::plan::read_config(&project)?;
    let hosts = crate::plan::mount_hosts(ctx, &project, &config)?;
    let (entry, _) = vibebox_core::session::connect(&ctx.index, &project, jiff::Timestamp::now())?;
    let grants = grants(ctx, &project, &config, &hosts);
    let defaults = Grants::defaults(&ctx.host_home);
    let beyond = widening(&grants, None, &defaults);
    let pending = pending(ctx, &entry.id, &grants)?;
    println!(
        "{} grants the box, beyond the defaults:",
        for_terminal(&project.config_path().display().to_string())
    );
    if beyond.is_empty() {
        println!("  nothing (the defaults need no consent)");
    }
    for w in &beyond {
        println!("  {}", for_terminal(&w.to_string()));
    }
    if pending.is_empty() {
        println!("All of it is accepted for session {}.", entry.id);
        // Recorded again: later changes are compared with this config.
        TrustStore::new(&ctx.home).accept(&entry.id, project.dir(), &grants)?;
        return Ok(());
    }
    println!("Not accepted yet:");
    for w in &pending {
        println!("  {}", for_terminal(&w.to_string()));
    }
    if !yes {
        if !terminal::can_ask() {
            return Err(hinted(
                "no terminal to ask; nothing was accepted",
                "run `vibebox trust --yes` to accept without a question",
            ));
        }
        if !terminal::confirm("Accept?")? {
            println!("Nothing was accepted.");
            return Ok(());
        }
    }
    TrustStore::new(&ctx.home).accept(&entry.id, project.dir(), &grants)?;
    println!("Accepted for session {}.", entry.id);
    Ok(())
}
