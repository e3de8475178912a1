//! The session plan at the CLI's edge: [`vibebox_core::plan`] with errors
//! turned into messages for a person.

use std::path::PathBuf;

use vibebox_core::config::Config;
use vibebox_core::plan::{self, PlanError, PlannedShare};
use vibebox_core::project::Project;

use crate::context::Context;
use crate::error::hinted;

pub use vibebox_core::plan::SessionPlan;

/// A plan error as a message with its problems (and hint, if any).
pub fn plan_error(e: PlanError) -> anyhow::Error {
    match e.help() {
        Some(help) => hinted(e.to_string(), help),
        None => anyhow::Error::new(e),
    }
}

/// Reads and validates the project's config once: its text and its value.
pub fn read_config(project: &Project) -> anyhow::Result<(String, Config)> {
    plan::read_config(project).map_err(plan_error)
}

/// The real host path of every `box.mounts` entry.
pub fn mount_hosts(
    ctx: &Context,
    project: &Project,
    config: &Config,
) -> anyhow::Result<Vec<PathBuf>> {
    plan::mount_hosts(project, config, &ctx.host_home).map_err(plan_error)
}

/// `[box] protect`, resolved.
pub fn protect_paths(ctx: &Context, project: &Project, config: &Config) -> Vec<PathBuf> {
    plan::protect_paths(project, config, &ctx.host_home)
}

/// Plans every share (see [`plan::plan_shares`]).
pub fn shares(
    ctx: &Context,
    project: &Project,
    config: &Config,
    hosts: &[PathBuf],
    create: bool,
) -> anyhow::Result<(Vec<PlannedShare>, Vec<String>)> {
    plan::plan_shares(project, config, hosts, &ctx.host_home, &ctx.home, create).map_err(plan_error)
}

/// The guards of every share as `explain` lists them.
pub fn describe(shares: &[PlannedShare]) -> Vec<String> {
    plan::describe(shares)
}
