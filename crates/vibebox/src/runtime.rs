//! Runtimes at the CLI's edge: which one would run a session, and the
//! `__supervise` command that runs one.

use std::path::PathBuf;

use vibebox_core::config::RuntimeChoice;
use vibebox_core::explain::RuntimeView;
use vibebox_core::plan::SessionPlan;
use vibebox_supervisor::{supervise, Host, SaveHook, SupervisorError};

use crate::context::Context;
use crate::error::hinted;

/// The vibebox executable, which runs the guest half of the KVM probe.
pub fn probe_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vibebox"))
}

/// Which runtime would run a session configured with `choice`, and why.
pub fn select(ctx: &Context, choice: RuntimeChoice) -> RuntimeView {
    let choice = ctx.runtime.unwrap_or(choice);
    vibebox_supervisor::select::select(choice, &ctx.home, &probe_exe())
}

/// A supervisor error as a message (and hint, if any).
pub fn supervisor_error(e: SupervisorError) -> anyhow::Error {
    match e.help.clone() {
        Some(help) => hinted(e.message, help),
        None => anyhow::Error::new(e),
    }
}

/// Runs `vibebox __supervise DIR`: the plan the client checked arrives as
/// JSON on standard input.
pub fn run_supervisor(ctx: &Context, dir: &std::path::Path) -> anyhow::Result<()> {
    let plan: SessionPlan = serde_json::from_reader(std::io::stdin().lock()).map_err(|e| {
        anyhow::anyhow!("the supervisor needs the start plan on its standard input: {e}")
    })?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if dir != plan.project_dir {
        anyhow::bail!(
            "the plan is for {}, not {}",
            plan.project_dir.display(),
            dir.display()
        );
    }
    let home = ctx.home.clone();
    let host = Host {
        vibebox_home: ctx.home.clone(),
        host_home: ctx.host_home.clone(),
        probe_exe: probe_exe(),
        save: Some(SaveHook(std::sync::Arc::new(move |plan, log| {
            crate::commands::store::save_on_idle(&home, plan, log)
        }))),
    };
    supervise(&plan, &host).map_err(supervisor_error)
}
