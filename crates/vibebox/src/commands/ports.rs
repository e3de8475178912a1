//! `vibebox ports [--json]`: the box's ports reachable from the host.

use vibebox_core::project::Project;
use vibebox_core::text::for_terminal;
use vibebox_supervisor::protocol::{self as control, Forward};

use crate::context::Context;

/// One line of the table (or of a notice): where a guest port is reachable.
pub fn describe(f: &Forward) -> String {
    let who = f
        .process
        .as_deref()
        .map(|p| format!(" ({})", for_terminal(p)))
        .unwrap_or_default();
    match f.host {
        Some(h) => format!(
            "port {}{who} in the box is http://127.0.0.1:{h} on this host",
            f.guest
        ),
        None => format!(
            "port {}{who} in the box is not forwarded: {}",
            f.guest,
            for_terminal(f.note.as_deref().unwrap_or(""))
        ),
    }
}

/// Runs `vibebox ports [--json]`.
pub fn run(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    let ports = control::status(&project.socket_path())
        .map(|s| s.ports)
        .unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&ports)?);
        return Ok(());
    }
    if ports.is_empty() {
        println!("no ports: the box is not running or listens on none (a server on 0.0.0.0 is forwarded)");
        return Ok(());
    }
    println!(
        "{:<7} {:<7} {:<8} {:<16} NOTE",
        "GUEST", "HOST", "SOURCE", "PROCESS"
    );
    for f in &ports {
        println!(
            "{:<7} {:<7} {:<8} {:<16} {}",
            f.guest,
            f.host.map(|h| h.to_string()).unwrap_or_else(|| "-".into()),
            f.source,
            for_terminal(f.process.as_deref().unwrap_or("-")),
            for_terminal(f.note.as_deref().unwrap_or(""))
        );
    }
    Ok(())
}
