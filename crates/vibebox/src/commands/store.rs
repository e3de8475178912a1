//! `vibebox save`, `vibebox saves`, `vibebox restore`: the project's work as
//! git bundles in a store (see `vibebox-store`).

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use vibebox_core::project::Project;
use vibebox_core::store::StoreUrl;
use vibebox_core::text::for_terminal;
use vibebox_core::trust::{Grants, TrustStore, Widening};
use vibebox_store::restore::Restored;
use vibebox_store::save::{SaveOutcome, SaveRequest};
use vibebox_store::{human_size, Remote, Report, SaveEntry, StoreError};

use crate::context::Context;
use crate::error::hinted;
use crate::terminal;

/// `--store` and `--endpoint`: a store named on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// The store to use instead of `[store]` in vibebox.toml
    /// (file:///path or s3://bucket/prefix).
    #[arg(long, env = "VIBEBOX_STORE")]
    pub store: Option<String>,
    /// The S3 server of an s3:// --store (http://host:port).
    #[arg(long, env = "VIBEBOX_STORE_ENDPOINT", requires = "store")]
    pub endpoint: Option<String>,
}

/// A store error as a message with its hint.
pub fn store_error(e: StoreError) -> anyhow::Error {
    match e.help() {
        Some(help) => hinted(e.to_string(), help),
        None => anyhow::Error::new(e),
    }
}

fn report(r: Report) {
    match r {
        Report::Step(s) => eprintln!("vibebox: {s}"),
        Report::Warning(w) => eprintln!("vibebox: warning: {w}"),
    }
}

/// The store of this command: `--store`, else the project's `[store]` (once
/// accepted: the box can write vibebox.toml), else the default.
fn resolve_store(ctx: &Context, args: &StoreArgs, project: &Project) -> anyhow::Result<StoreUrl> {
    if let Some(url) = &args.store {
        return StoreUrl::parse(url, args.endpoint.as_deref()).map_err(|e| {
            hinted(
                format!("--store: {e}"),
                format!("allowed: {}", vibebox_core::store::STORE_URL_RULE),
            )
        });
    }
    if project.has_config() {
        let (_, config) = crate::plan::read_config(project)?;
        if let Some(store) = config.store {
            ensure_store_accepted(ctx, project, &store)?;
            return Ok(store);
        }
    }
    Ok(StoreUrl::default_for(&ctx.home))
}

/// Asks (or refuses) when the config names a store not accepted for this
/// project: `vibebox save` would upload the project there.
fn ensure_store_accepted(ctx: &Context, project: &Project, store: &StoreUrl) -> anyhow::Result<()> {
    let Some(session) = project.read_session_id()? else {
        return Err(hinted(
            format!(
                "vibebox.toml names the store {store}, which you have not accepted for {}",
                for_terminal(&project.dir().display().to_string())
            ),
            "run `vibebox trust` here to review and accept what vibebox.toml grants",
        ));
    };
    let trust = TrustStore::new(&ctx.home);
    let defaults = Grants::defaults(&ctx.host_home);
    let accepted = trust.accepted(&session)?;
    if accepted.as_ref().and_then(|a| a.store.as_ref()) == Some(store) {
        return Ok(());
    }
    let w = Widening::Store(store.clone());
    eprintln!(
        "vibebox: {} names a store you have not accepted:\n  {}",
        for_terminal(&project.config_path().display().to_string()),
        for_terminal(&w.to_string())
    );
    if !terminal::can_ask() {
        return Err(hinted(
            "the store is not accepted; nothing was saved or restored",
            "run `vibebox trust` here (or run this command at a terminal to be asked)",
        ));
    }
    if !terminal::confirm("Accept this store for this project?")? {
        return Err(hinted(
            "you did not accept the store; nothing was saved or restored",
            "change [store] in vibebox.toml, or pass --store",
        ));
    }
    let mut record = accepted.unwrap_or(defaults);
    record.store = Some(store.clone());
    trust.accept(&session, project.dir(), &record)?;
    Ok(())
}

fn open(url: &StoreUrl) -> anyhow::Result<Remote> {
    Remote::open(url).map_err(|e| store_error(e.into()))
}

/// Runs `vibebox save [-m MSG]`.
pub fn save(ctx: &Context, message: Option<String>, args: &StoreArgs) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    project.ensure_state_dir()?;
    let (entry, _) = vibebox_core::session::connect(&ctx.index, &project, Timestamp::now())?;
    let url = resolve_store(ctx, args, &project)?;
    let remote = open(&url)?;
    let started = std::time::Instant::now();
    let state = project.state_dir();
    let outcome = vibebox_store::save::save(
        &remote,
        &SaveRequest {
            project: project.dir(),
            state: &state,
            session: Some(entry.id),
            message,
        },
        &mut report,
    )
    .map_err(store_error)?;
    match outcome {
        SaveOutcome::Unchanged(id) => {
            println!("nothing changed since save {id}; nothing was uploaded");
        }
        SaveOutcome::Saved { entry, .. } => {
            let how = match &entry.base {
                Some(b) => format!("incremental on {b}"),
                None => "full".into(),
            };
            println!(
                "saved {}: {} files, {} bundle ({how}) to {} in {:.1} s",
                entry.id,
                entry.files,
                human_size(entry.bundle_size),
                url,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Runs `vibebox saves [--json] [--all]`.
pub fn saves(ctx: &Context, json: bool, all: bool, args: &StoreArgs) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    let url = resolve_store(ctx, args, &project)?;
    let workspace = if all { None } else { workspace_of(&project) };
    if !all && workspace.is_none() {
        if json {
            println!("[]");
        } else {
            println!(
                "{} has no saves yet (`vibebox save` makes one; `vibebox saves --all` lists every save in {url})",
                for_terminal(&project.dir().display().to_string())
            );
        }
        return Ok(());
    }
    let remote = open(&url)?;
    let list =
        vibebox_store::history::list(&remote, workspace, &mut report).map_err(store_error)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("no saves in {url}");
        return Ok(());
    }
    let now = Timestamp::now();
    let mut rows = vec![vec![
        "ID".to_string(),
        "SAVED".into(),
        "SIZE".into(),
        "FILES".into(),
        "DIRECTORY".into(),
        "MESSAGE".into(),
    ]];
    for e in list.iter().rev() {
        let size = match &e.base {
            Some(_) => format!("{} (+)", human_size(e.bundle_size)),
            None => human_size(e.bundle_size),
        };
        rows.push(vec![
            e.id.clone(),
            crate::terminal::ago(e.time, now),
            size,
            e.files.to_string(),
            for_terminal(&e.directory.display().to_string()),
            for_terminal(e.message.lines().next().unwrap_or("")),
        ]);
    }
    print!("{}", crate::terminal::table(&rows));
    Ok(())
}

/// The workspace of the project's saves, if it has made or restored one.
fn workspace_of(project: &Project) -> Option<uuid::Uuid> {
    let repo = project.state_dir().join("save.git");
    if !repo.is_dir() {
        return None;
    }
    vibebox_store::workspace::Workspace::open(project.dir(), &project.state_dir())
        .ok()?
        .id()
}

/// Runs `vibebox restore [ID] [--into DIR]`.
pub fn restore(
    ctx: &Context,
    id: Option<String>,
    into: Option<PathBuf>,
    args: &StoreArgs,
) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    let url = resolve_store(ctx, args, &project)?;
    let remote = open(&url)?;
    let entry: SaveEntry = match &id {
        Some(id) => vibebox_store::history::find(&remote, id).map_err(store_error)?,
        None => {
            let ws = workspace_of(&project).ok_or_else(|| {
                hinted(
                    format!(
                        "{} has no saves to restore",
                        for_terminal(&project.dir().display().to_string())
                    ),
                    "name a save: `vibebox saves --all` lists every save in the store",
                )
            })?;
            let list = vibebox_store::history::list(&remote, Some(ws), &mut report)
                .map_err(store_error)?;
            list.into_iter().next_back().ok_or_else(|| {
                hinted(
                    format!("the store {url} has no saves of this project"),
                    "`vibebox saves --all` lists every save in the store",
                )
            })?
        }
    };
    let started = std::time::Instant::now();
    let done: Restored = match into {
        Some(dir) => {
            let dir = vibebox_core::mounts::normalize(&if dir.is_absolute() {
                dir
            } else {
                ctx.cwd.join(dir)
            });
            vibebox_store::restore::into_new(&remote, &entry, &dir, &mut report)
                .map_err(store_error)?
        }
        None => {
            project.ensure_state_dir()?;
            vibebox_store::restore::in_place(
                &remote,
                &entry,
                project.dir(),
                &project.state_dir(),
                &mut report,
            )
            .map_err(store_error)?
        }
    };
    println!(
        "restored save {} ({} files, saved {} from {}) into {} in {:.1} s",
        done.entry.id,
        done.entry.files,
        crate::terminal::ago(done.entry.time, Timestamp::now()),
        for_terminal(&done.entry.directory.display().to_string()),
        for_terminal(&done.directory.display().to_string()),
        started.elapsed().as_secs_f64()
    );
    if done.directory != project.dir() {
        println!(
            "enter its box with: cd {} && vibebox",
            shell_quote(&done.directory)
        );
    }
    Ok(())
}

fn shell_quote(p: &Path) -> String {
    vibebox_core::text::shell_quote(&for_terminal(&p.display().to_string()))
}

/// `[supervisor] save_on_idle`: the supervisor saves the workspace before the
/// box stops or suspends, to the store of the config the client checked (its
/// store was accepted with the rest of the config at the start).
pub fn save_on_idle(
    vibebox_home: &Path,
    plan: &vibebox_core::plan::SessionPlan,
    log: &mut dyn FnMut(&str),
) {
    let config = match plan.config() {
        Ok(c) => c,
        Err(e) => return log(&format!("save_on_idle: the config does not parse: {e}")),
    };
    let url = config
        .store
        .clone()
        .unwrap_or_else(|| StoreUrl::default_for(vibebox_home));
    let project = plan.project();
    let session = project.read_session_id().ok().flatten();
    let remote = match Remote::open(&url) {
        Ok(r) => r,
        Err(e) => return log(&format!("save_on_idle: {e}")),
    };
    let state = project.state_dir();
    let result = vibebox_store::save::save(
        &remote,
        &SaveRequest {
            project: project.dir(),
            state: &state,
            session,
            message: Some("saved when the box stopped (save_on_idle)".into()),
        },
        &mut |r| match r {
            Report::Step(s) => log(&format!("save_on_idle: {s}")),
            Report::Warning(w) => log(&format!("save_on_idle: warning: {w}")),
        },
    );
    match result {
        Ok(SaveOutcome::Saved { entry, .. }) => log(&format!(
            "save_on_idle: saved {} ({} files, {}) to {url}",
            entry.id,
            entry.files,
            human_size(entry.bundle_size)
        )),
        Ok(SaveOutcome::Unchanged(id)) => {
            log(&format!("save_on_idle: nothing changed since save {id}"))
        }
        Err(e) => log(&format!(
            "save_on_idle: the save failed (the last good save stays the latest): {e}"
        )),
    }
}
