//! `vibebox delete <id>`: remove a session's `.vibebox/` and its index entry.

use anyhow::Context as _;
use vibebox_core::index::{IndexError, SessionEntry};
use vibebox_core::project::Project;
use vibebox_core::session::match_prefix;

use crate::context::Context;
use crate::error::hinted;
use crate::terminal;
use vibebox_supervisor::protocol as control;

/// Runs `vibebox delete`.
pub fn run(ctx: &Context, prefix: &str, yes: bool, force: bool) -> anyhow::Result<()> {
    let entries = ctx.index.update(|e| Ok::<_, IndexError>(e.clone()))?;
    let matches = match_prefix(&entries, prefix);
    let entry = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err(hinted(
                format!("no session id starts with `{prefix}`"),
                "`vibebox list` shows the sessions and their ids",
            ))
        }
        many => {
            let ids: Vec<String> = many
                .iter()
                .map(|e| format!("{} ({})", e.id, e.directory.display()))
                .collect();
            return Err(hinted(
                format!(
                    "`{prefix}` names {} sessions: {}",
                    many.len(),
                    ids.join(", ")
                ),
                "give more characters of the id",
            ));
        }
    };
    let project = Project::at(&entry.directory);
    if let Some(status) = control::status(&project.socket_path()) {
        if !force {
            return Err(hinted(
                format!(
                    "session {} is {} with {} client(s) attached; nothing was deleted",
                    entry.id, status.state, status.clients
                ),
                "leave its terminals and wait for it to stop, or pass --force to stop it first",
            ));
        }
        control::stop(&project.socket_path(), true)
            .with_context(|| format!("cannot stop session {}", entry.id))?;
    }
    if !yes {
        if !terminal::can_ask() {
            return Err(hinted(
                format!(
                    "deleting session {} needs confirmation; nothing was deleted",
                    entry.id
                ),
                "pass --yes to delete without asking",
            ));
        }
        let question = format!(
            "Delete session {} of {}? This removes {} (instance disk, keys, logs).",
            entry.id,
            entry.directory.display(),
            project.state_dir().display()
        );
        if !terminal::confirm(&question)? {
            println!("nothing was deleted");
            return Ok(());
        }
    }
    remove_session(ctx, &entry)?;
    println!(
        "deleted session {} ({})",
        entry.id,
        entry.directory.display()
    );
    Ok(())
}

/// Removes a stopped session: its `.vibebox/` (when it still holds this
/// session) and its index entry, under the index lock.
pub fn remove_session(ctx: &Context, entry: &SessionEntry) -> anyhow::Result<()> {
    let project = Project::at(&entry.directory);
    ctx.index.update(|entries| {
        // The directory may have been given to another session since: only
        // remove .vibebox/ when it still holds this session.
        if project.read_session_id().ok().flatten() == Some(entry.id) {
            let dir = project.state_dir();
            vibebox_core::subids::remove_tree(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        entries.retain(|e| e.id != entry.id);
        Ok::<_, anyhow::Error>(())
    })?;
    vibebox_core::trust::TrustStore::new(&ctx.home).forget(&entry.id);
    let _ = std::fs::remove_file(
        ctx.home
            .join("suspended")
            .join(format!("{}.json", entry.id)),
    );
    let _ = std::fs::remove_dir_all(ctx.home.join("snapshots").join(entry.id.to_string()));
    Ok(())
}
