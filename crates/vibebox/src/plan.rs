//! The start plan: what the client checked, handed to the supervisor as is.
//!
//! The client reads `vibebox.toml` once, validates it, resolves every mount to
//! its real host path, checks consent and plans the protected paths. The
//! supervisor gets exactly that (as JSON on its standard input) and never
//! reads the config file again: a box that rewrites `vibebox.toml` between the
//! check and the start changes nothing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vibebox_core::config::Config;
use vibebox_core::diagnostic::{FileProblem, FileProblems};
use vibebox_core::mounts::{self, MountMode};
use vibebox_core::project::Project;
use vibebox_core::protect::{self, Guard, ProtectContext};

use crate::context::Context;
use crate::error::hinted;

/// One share, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedShare {
    /// The real host path.
    pub host: PathBuf,
    /// The absolute guest path.
    pub guest: String,
    /// Read-only or read-write.
    pub mode: MountMode,
    /// Hidden, pinned and read-only paths inside it, parents first.
    pub guards: Vec<Guard>,
}

/// Everything a start needs from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartPlan {
    /// The config file.
    pub config_file: PathBuf,
    /// Its text, exactly as checked.
    pub config_source: String,
    /// The project first, then `box.mounts` in order.
    pub shares: Vec<PlannedShare>,
    /// What the person should know (protected paths that do not exist, …).
    pub warnings: Vec<String>,
}

impl StartPlan {
    /// The config, parsed from the checked text (never from the file).
    pub fn config(&self) -> anyhow::Result<Config> {
        Config::parse(&self.config_source, &self.config_file)
            .map_err(|p| anyhow::Error::new(p).context("the checked config does not parse"))
    }
}

/// Reads and validates the project's config once: its text and its value.
pub fn read_config(project: &Project) -> anyhow::Result<(String, Config)> {
    let path = project.config_path();
    let source = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let config = Config::parse(&source, &path).map_err(|p| {
        anyhow::Error::new(p).context(format!(
            "{} is not valid; nothing was changed",
            path.display()
        ))
    })?;
    Ok((source, config))
}

/// The real host path of every `box.mounts` entry, or every problem at once
/// (with its line and key).
pub fn mount_hosts(
    ctx: &Context,
    project: &Project,
    config: &Config,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut hosts = Vec::new();
    let mut problems = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        match mounts::real_host_path(&m.spec.host, &ctx.host_home, project.dir()) {
            Ok(p) => hosts.push(p),
            Err(e) => problems.push(FileProblem {
                file: project.config_path(),
                location: m.location,
                key: Some(format!("box.mounts[{i}]")),
                message: vibebox_core::text::for_terminal(&e.to_string()),
                help: Some(vibebox_core::text::for_terminal(&e.help())),
            }),
        }
    }
    if problems.is_empty() {
        Ok(hosts)
    } else {
        Err(anyhow::Error::new(FileProblems(problems))
            .context("a mount of vibebox.toml cannot be used; nothing was started"))
    }
}

/// `[box] protect`, resolved like host paths of mounts (never following a
/// symlink: a protected path that is one is refused when planned).
pub fn protect_paths(ctx: &Context, project: &Project, config: &Config) -> Vec<PathBuf> {
    config
        .protect
        .iter()
        .map(|p| mounts::host_path(p, &ctx.host_home, project.dir()))
        .collect()
}

/// Plans every share: the project, then the config's mounts at `hosts`.
/// `create` makes the placeholders of missing protected paths (a start);
/// without it nothing on disk changes (`explain`).
pub fn shares(
    ctx: &Context,
    project: &Project,
    config: &Config,
    hosts: &[PathBuf],
    create: bool,
) -> anyhow::Result<(Vec<PlannedShare>, Vec<String>)> {
    let hidden = [project.state_dir(), ctx.home.clone()];
    let extra = protect_paths(ctx, project, config);
    let pctx = ProtectContext {
        project_dir: project.dir(),
        host_home: &ctx.host_home,
        hidden: &hidden,
        extra: &extra,
        create,
    };
    let mut list = vec![(
        project.dir().to_path_buf(),
        mounts::project_guest_path(project.dir()),
        MountMode::ReadWrite,
    )];
    for (m, host) in config.mounts.iter().zip(hosts) {
        let guest = mounts::guest_path(&m.spec.guest).unwrap_or_else(|_| m.spec.guest.clone());
        list.push((host.clone(), guest, m.spec.mode));
    }
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (host, guest, mode) in list {
        let planned = protect::plan_share(&host, mode, &pctx).map_err(|e| {
            hinted(
                format!(
                    "cannot protect the share of {}: {}",
                    vibebox_core::text::for_terminal(&host.display().to_string()),
                    vibebox_core::text::for_terminal(&e.to_string())
                ),
                e.help(),
            )
        })?;
        for c in &planned.created {
            if create {
                warnings.push(format!(
                    "created {} so that the box cannot (it is read-only in the box)",
                    c.display()
                ));
            }
        }
        warnings.extend(planned.warnings);
        out.push(PlannedShare {
            host,
            guest,
            mode,
            guards: planned.guards,
        });
    }
    Ok((out, warnings))
}

/// The guards of every share as `explain` lists them (nothing is created).
pub fn describe(shares: &[PlannedShare]) -> Vec<String> {
    let mut out = Vec::new();
    for s in shares {
        for g in &s.guards {
            out.push(vibebox_core::text::for_terminal(&g.to_string()));
        }
    }
    out
}
