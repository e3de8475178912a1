//! `vibebox` with no command, `vibebox exec`, `vibebox stop`:
//! find or create the project's session, start it when needed, and enter it.

use std::io::IsTerminal;

use jiff::Timestamp;
use vibebox_core::config::Config;
use vibebox_core::index::SessionEntry;
use vibebox_core::project::{Project, ProjectError};
use vibebox_core::session::{self, Found};

use crate::attach;
use crate::context::Context;
use crate::error::hinted;
use crate::plan::SessionPlan;
use crate::terminal;
use vibebox_supervisor::protocol as control;

/// What `prepare` found: the project, its checked config (and the text it
/// was parsed from), the real host paths of its mounts, its session.
pub(crate) struct Prepared {
    pub(crate) project: Project,
    pub(crate) config: Config,
    pub(crate) config_source: String,
    pub(crate) hosts: Vec<std::path::PathBuf>,
    pub(crate) entry: SessionEntry,
    /// Which runtime a start would use: chosen only when the box must be
    /// started (probing the runtimes costs a few processes; a command for a
    /// running box needs none).
    runtime: std::cell::OnceCell<vibebox_core::explain::RuntimeView>,
}

impl Prepared {
    /// The runtime a start would use, or why none can run here.
    fn runtime(&self, ctx: &Context) -> anyhow::Result<&vibebox_core::explain::RuntimeView> {
        let runtime = self
            .runtime
            .get_or_init(|| crate::runtime::select(ctx, self.config.runtime));
        if runtime.selected.is_none() {
            return Err(hinted(
                format!("cannot start session {}: {}", self.entry.id, runtime.reason),
                "`vibebox explain` shows the runtime vibebox would use and why",
            ));
        }
        Ok(runtime)
    }

    /// The start plan, made only when a supervisor must be started: it walks
    /// the shares to plan their protections.
    pub(crate) fn plan(&self, ctx: &Context) -> anyhow::Result<SessionPlan> {
        let runtime = self.runtime(ctx)?;
        // The first line of a start names the runtime and the isolation it gives.
        let isolation = match runtime.selected.as_deref() {
            Some("vm") => "a virtual machine with its own kernel",
            Some("container") => "a container that shares the host's kernel",
            _ => "an unknown runtime",
        };
        eprintln!(
            "vibebox: starting session {} in {isolation} ({})",
            self.entry.id, runtime.reason
        );
        let (shares, warnings) =
            crate::plan::shares(ctx, &self.project, &self.config, &self.hosts, true)?;
        for w in &warnings {
            eprintln!("vibebox: {}", vibebox_core::text::for_terminal(w));
        }
        // What `:explain` shows in the box, made here with the checked config.
        let explain = super::explain::build_planned(
            ctx,
            &self.project,
            &self.config,
            runtime.clone(),
            &shares,
        )
        .map(|x| super::explain::render(&x))
        .unwrap_or_default();
        Ok(SessionPlan {
            project_dir: self.project.dir().to_path_buf(),
            config_file: self.project.config_path(),
            config_source: self.config_source.clone(),
            shares,
            warnings,
            explain,
            runtime: runtime.selected.clone().unwrap_or_default(),
        })
    }
}

/// Finds the project, writes the default config when missing, validates the
/// config, connects the session (creating it when needed) and checks consent.
pub(crate) fn prepare(ctx: &Context) -> anyhow::Result<Prepared> {
    let project = Project::find(&ctx.cwd);
    if !project.has_config() {
        // The default mounts' directories exist before the config that names
        // them appears, so a concurrent vibebox never sees one without the other.
        super::create_default_mount_dirs(ctx, &project)?;
        match project.write_default_config() {
            Ok(()) => {
                eprintln!(
                    "vibebox: created {} with the defaults",
                    project.config_path().display()
                );
            }
            // Another vibebox created it at the same moment: use theirs.
            Err(ProjectError::ConfigExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    project.check_state_dir()?;
    // Read once: the supervisor gets this text, never the file.
    let (config_source, config) = crate::plan::read_config(&project)?;
    let hosts = crate::plan::mount_hosts(ctx, &project, &config)?;
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
    let grants = super::trust::grants(ctx, &project, &config, &hosts);
    super::trust::ensure_accepted(ctx, &project, &entry.id, &grants)?;
    vibebox_supervisor::rundir::run_root().map_err(crate::runtime::supervisor_error)?;
    let prepared = Prepared {
        runtime: std::cell::OnceCell::new(),
        project,
        config,
        config_source,
        hosts,
        entry,
    };
    // A box that must be started needs a runtime: say at once when none can
    // run here (before, say, building a missing image).
    if control::status(&prepared.project.socket_path()).is_none() {
        prepared.runtime(ctx)?;
    }
    Ok(prepared)
}

/// The exit code with which `:new` in the box asks the host for a fresh session.
const NEW_SESSION_CODE: i32 = 197;

/// Runs `vibebox` with no command: an interactive shell in the box.
///
/// `:new` in the box ends the shell with [`NEW_SESSION_CODE`]; that is only a
/// request: the person at the HOST terminal confirms it or nothing happens.
pub fn run(ctx: &Context) -> anyhow::Result<i32> {
    loop {
        let p = prepare(ctx)?;
        let (project, entry) = (&p.project, &p.entry);
        let mut attached = attach::ensure_running(
            ctx,
            project,
            &p.config,
            entry.id,
            attach::Need::Ssh,
            &|| p.plan(ctx),
        )?;
        if std::io::stdin().is_terminal() {
            attached.follow_at_terminal(project);
        }
        let code = attach::run_shell(project, &attached)?;
        drop(attached);
        if code != NEW_SESSION_CODE {
            return Ok(code);
        }
        if !terminal::can_ask() {
            eprintln!(
                "vibebox: `:new` needs a confirmation at the host terminal; nothing was deleted"
            );
            return Ok(1);
        }
        let question = format!(
            "Delete session {} of {} (its disk, keys and logs in .vibebox/; project files stay) and start a fresh one?",
            entry.id,
            project.dir().display()
        );
        if !terminal::confirm(&question)? {
            eprintln!("vibebox: nothing was deleted");
            return Ok(0);
        }
        if control::status(&project.socket_path()).is_some() {
            eprintln!("vibebox: stopping session {}", entry.id);
            control::stop(&project.socket_path(), true)?;
        }
        super::delete::remove_session(ctx, entry)?;
        eprintln!(
            "vibebox: deleted session {}; starting a fresh one",
            entry.id
        );
    }
}

/// Runs `vibebox exec -- CMD ARGS…`.
pub fn exec(ctx: &Context, command: &[String]) -> anyhow::Result<i32> {
    let p = prepare(ctx)?;
    let project = &p.project;
    let attached = attach::ensure_running(
        ctx,
        project,
        &p.config,
        p.entry.id,
        attach::Need::Commands,
        &|| p.plan(ctx),
    )?;
    let line = command
        .iter()
        .map(|a| attach::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    attach::run_command(project, &attached, &format!("exec {line}"))
}

/// Runs `vibebox stop [--shutdown]`: suspends the box (its processes go on
/// at the next start), or powers it off.
pub fn stop(ctx: &Context, shutdown: bool) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    let dir = project.dir().display();
    let session = project.read_session_id().ok().flatten();
    let suspended = |p: &Project| {
        session.is_some_and(|id| vibebox_vm::runtime::is_suspended(p, &ctx.home, &id))
    };
    if control::status(&project.socket_path()).is_none() {
        if let (true, Some(id)) = (shutdown && suspended(&project), session) {
            vibebox_vm::runtime::discard_suspended(&project, &ctx.home, &id);
            println!(
                "the box of {dir} was suspended: its saved state is gone, the next start boots"
            );
        } else {
            println!("the box of {dir} is not running");
        }
        return Ok(());
    }
    control::stop(&project.socket_path(), shutdown)?;
    if shutdown {
        println!("powered off the box of {dir}");
    } else if suspended(&project) {
        println!("suspended the box of {dir}: the next start resumes it (`vibebox stop --shutdown` powers off)");
    } else {
        println!("stopped the box of {dir}");
    }
    Ok(())
}
