//! The model behind `vibebox explain` and `:explain`: everything that decides
//! what the box can see and reach, resolved to concrete values.

use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use crate::config::Config;
use crate::mounts::{self, ResolvedMount};
use crate::policy::NetworkConfigView;
use crate::project::Project;

/// A project's storage, as paths relative to the project directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Storage {
    /// The config file (`vibebox.toml`).
    pub config: String,
    /// Whether the config file exists (else the defaults apply).
    pub config_exists: bool,
    /// The project cache (`.vibebox/`).
    pub state_dir: String,
    /// The session id file.
    pub session_file: String,
    /// The instance disk.
    pub disk: String,
    /// Keys and the pinned host key.
    pub ssh: String,
    /// Logs.
    pub logs: String,
    /// Host disk used now.
    pub usage: crate::project::DiskUsage,
}

/// The runtime that will run the session, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeView {
    /// What the config asks for (`auto`, `vm`, `container`).
    pub requested: String,
    /// What will be used, if anything can run.
    pub selected: Option<String>,
    /// Why, in one sentence.
    pub reason: String,
}

/// The base image the session uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageView {
    /// Its name.
    pub name: String,
    /// Where it lives.
    pub path: PathBuf,
    /// Whether it has been built.
    pub present: bool,
}

/// The machine's size and lifecycle settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// Virtual CPUs.
    pub cpu_count: u32,
    /// Memory (MiB).
    pub ram_mb: u32,
    /// Instance disk (GiB).
    pub disk_gb: u32,
    /// Grace period after the last client leaves (ms).
    pub auto_shutdown_ms: u64,
    /// What happens then: suspend or shutdown.
    pub on_idle: crate::config::OnIdle,
}

/// Everything `explain` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The project directory.
    pub project: PathBuf,
    /// The session id, when the project has one.
    pub session: Option<Uuid>,
    /// Mounts, the project first.
    pub mounts: Vec<ResolvedMount>,
    /// Network policy.
    pub network: NetworkConfigView,
    /// Storage paths.
    pub storage: Storage,
    /// Size and lifecycle.
    pub resources: Resources,
    /// Runtime choice.
    pub runtime: RuntimeView,
    /// Base image.
    pub image: ImageView,
    /// Protected paths of the shares, one line each.
    pub protected: Vec<String>,
    /// What the person should know about protections.
    pub protect_warnings: Vec<String>,
    /// What the config grants that was not accepted yet.
    pub not_accepted: Vec<String>,
}

impl Explanation {
    /// Builds the explanation of `project` with `config`.
    pub fn new(
        project: &Project,
        config: &Config,
        host_home: &Path,
        runtime: RuntimeView,
        image: ImageView,
    ) -> Explanation {
        let rel = |p: PathBuf| {
            p.strip_prefix(project.dir())
                .map(|r| r.display().to_string())
                .unwrap_or_else(|_| p.display().to_string())
        };
        let dir = |p: PathBuf| format!("{}/", rel(p));
        Explanation {
            project: project.dir().to_path_buf(),
            session: project.read_session_id().ok().flatten(),
            mounts: mounts::resolve(&config.mount_specs(), host_home, project.dir()),
            network: NetworkConfigView::from(&config.network),
            storage: Storage {
                config: rel(project.config_path()),
                config_exists: project.has_config(),
                state_dir: dir(project.state_dir()),
                session_file: rel(project.session_file()),
                disk: rel(project.disk_path()),
                ssh: dir(project.ssh_dir()),
                logs: dir(project.logs_dir()),
                usage: project.disk_usage(),
            },
            resources: Resources {
                cpu_count: config.cpu_count,
                ram_mb: config.ram_mb,
                disk_gb: config.disk_gb,
                auto_shutdown_ms: config.auto_shutdown_ms,
                on_idle: config.on_idle,
            },
            runtime,
            image,
            protected: Vec::new(),
            protect_warnings: Vec::new(),
            not_accepted: Vec::new(),
        }
    }
}
