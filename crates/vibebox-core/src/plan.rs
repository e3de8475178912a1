//! The session plan: everything a start needs, resolved once by the client
//! from the project, its config and the host, and handed to the supervisor
//! and its runtime as it is.
//!
//! The client reads `vibebox.toml` once, validates it, resolves every mount to
//! its real host path, checks consent and plans the protected paths. The
//! supervisor gets exactly that (as JSON) and never reads the config file
//! again: a box that rewrites `vibebox.toml` between the check and the start
//! changes nothing. `explain` builds the same plan (without creating
//! anything) to show what a start would do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::diagnostic::{FileProblem, FileProblems};
use crate::mounts::{self, MountMode};
use crate::project::Project;
use crate::protect::{self, Guard, ProtectContext, ProtectError};
use crate::text::for_terminal;

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
pub struct SessionPlan {
    /// The project directory (real path).
    pub project_dir: PathBuf,
    /// The config file.
    pub config_file: PathBuf,
    /// Its text, exactly as checked.
    pub config_source: String,
    /// The project first, then `box.mounts` in order.
    pub shares: Vec<PlannedShare>,
    /// What the person should know (protected paths that do not exist, …).
    pub warnings: Vec<String>,
    /// The text `:explain` shows in the box.
    pub explain: String,
    /// The runtime the client selected (`vm` or `container`).
    pub runtime: String,
}

/// A plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The config file cannot be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is not valid.
    #[error("{} is not valid; nothing was changed", file.display())]
    Config {
        /// The file.
        file: PathBuf,
        /// Every problem, with its line and key.
        #[source]
        problems: FileProblems,
    },
    /// A mount's host side cannot be used.
    #[error("a mount of vibebox.toml cannot be used; nothing was started")]
    Mounts(#[source] FileProblems),
    /// A protected path cannot be protected.
    #[error("cannot protect the share of {}: {}", for_terminal(&share.display().to_string()), for_terminal(&error.to_string()))]
    Protect {
        /// The share's host path.
        share: PathBuf,
        /// Why.
        error: ProtectError,
    },
}

impl PlanError {
    /// The detailed problems, when there are some (one a line).
    pub fn problems(&self) -> Option<&FileProblems> {
        match self {
            PlanError::Config { problems, .. } | PlanError::Mounts(problems) => Some(problems),
            _ => None,
        }
    }

    /// What to do about it, when there is one thing to say.
    pub fn help(&self) -> Option<String> {
        match self {
            PlanError::Protect { error, .. } => Some(error.help()),
            _ => None,
        }
    }
}

impl SessionPlan {
    /// The config, parsed from the checked text (never from the file).
    pub fn config(&self) -> Result<Config, FileProblems> {
        Config::parse(&self.config_source, &self.config_file)
    }

    /// The project.
    pub fn project(&self) -> Project {
        Project::at(&self.project_dir)
    }
}

/// Reads and validates the project's config once: its text and its value.
pub fn read_config(project: &Project) -> Result<(String, Config), PlanError> {
    let file = project.config_path();
    let source = std::fs::read_to_string(&file).map_err(|source| PlanError::Read {
        file: file.clone(),
        source,
    })?;
    let config =
        Config::parse(&source, &file).map_err(|problems| PlanError::Config { file, problems })?;
    Ok((source, config))
}

/// The real host path of every `box.mounts` entry, or every problem at once
/// (with its line and key).
pub fn mount_hosts(
    project: &Project,
    config: &Config,
    host_home: &Path,
) -> Result<Vec<PathBuf>, PlanError> {
    let mut hosts = Vec::new();
    let mut problems = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        match mounts::real_host_path(&m.spec.host, host_home, project.dir()) {
            Ok(p) => hosts.push(p),
            Err(e) => problems.push(FileProblem {
                file: project.config_path(),
                location: m.location,
                key: Some(format!("box.mounts[{i}]")),
                message: for_terminal(&e.to_string()),
                help: Some(for_terminal(&e.help())),
            }),
        }
    }
    if problems.is_empty() {
        Ok(hosts)
    } else {
        Err(PlanError::Mounts(FileProblems(problems)))
    }
}

/// `[box] protect`, resolved like host paths of mounts (never following a
/// symlink: a protected path that is one is refused when planned).
pub fn protect_paths(project: &Project, config: &Config, host_home: &Path) -> Vec<PathBuf> {
    config
        .protect
        .iter()
        .map(|p| mounts::host_path(p, host_home, project.dir()))
        .collect()
}

/// Plans every share: the project, then the config's mounts at `hosts`.
/// `create` makes the placeholders of missing protected paths (a start);
/// without it nothing on disk changes (`explain`). Returns the shares and
/// what the person should know.
pub fn plan_shares(
    project: &Project,
    config: &Config,
    hosts: &[PathBuf],
    host_home: &Path,
    vibebox_home: &Path,
    create: bool,
) -> Result<(Vec<PlannedShare>, Vec<String>), PlanError> {
    let hidden = [project.state_dir(), vibebox_home.to_path_buf()];
    let extra = protect_paths(project, config, host_home);
    let pctx = ProtectContext {
        project_dir: project.dir(),
        host_home,
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
        let planned =
            protect::plan_share(&host, mode, &pctx).map_err(|error| PlanError::Protect {
                share: host.clone(),
                error,
            })?;
        if create {
            for c in &planned.created {
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

/// The guards of every share, one line each, as `explain` lists them.
pub fn describe(shares: &[PlannedShare]) -> Vec<String> {
    shares
        .iter()
        .flat_map(|s| s.guards.iter().map(|g| for_terminal(&g.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_travels_as_json_and_gives_back_the_checked_config() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let project = Project::at(&root.join("p"));
        std::fs::create_dir_all(project.dir()).unwrap();
        std::fs::write(project.config_path(), "[box]\ncpu_count = 3\nmounts = []\n").unwrap();
        let (source, config) = read_config(&project).unwrap();
        let hosts = mount_hosts(&project, &config, &root).unwrap();
        let (shares, _) = plan_shares(
            &project,
            &config,
            &hosts,
            &root,
            &root.join("vbhome"),
            false,
        )
        .unwrap();
        let plan = SessionPlan {
            project_dir: project.dir().to_path_buf(),
            config_file: project.config_path(),
            config_source: source,
            shares,
            warnings: Vec::new(),
            explain: String::new(),
            runtime: "vm".into(),
        };
        // The box rewrites the file afterwards: the plan does not care.
        std::fs::write(project.config_path(), "[box]\ncpu_count = 64\n").unwrap();
        let back: SessionPlan =
            serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        assert_eq!(back.config().unwrap().cpu_count, 3);
        assert_eq!(back.shares[0].host, project.dir());
    }

    #[test]
    fn errors_keep_their_problems() {
        let dir = tempfile::tempdir().unwrap();
        let project = Project::at(dir.path());
        std::fs::write(project.config_path(), "[box]\nmounts = [\"~/nope:/n\"]\n").unwrap();
        let (_, config) = read_config(&project).unwrap();
        let e = mount_hosts(&project, &config, dir.path()).unwrap_err();
        assert_eq!(
            e.problems().unwrap().0[0].key.as_deref(),
            Some("box.mounts[0]")
        );
        std::fs::write(project.config_path(), "[box]\ncpu = 1\n").unwrap();
        let e = read_config(&project).unwrap_err();
        assert!(e.to_string().ends_with("is not valid; nothing was changed"));
    }
}
