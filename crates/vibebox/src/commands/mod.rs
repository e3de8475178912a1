//! One module per command.

pub mod connect;
pub mod delete;
pub mod explain;
pub mod fork;
pub mod image;
pub mod init;
pub mod list;
pub mod logs;
pub mod ports;
pub mod reload;
pub mod snapshot;
pub mod sshcfg;
pub mod store;
pub mod terminals;
pub mod trust;

use anyhow::Context as _;
use vibebox_core::config::Config;
use vibebox_core::project::Project;

/// Loads the project's config, or the defaults when it has none yet.
pub fn load_config(project: &Project) -> anyhow::Result<Config> {
    if !project.has_config() {
        return Ok(Config::default());
    }
    crate::plan::read_config(project).map(|(_, config)| config)
}

/// Creates the missing host directories of the default config's mounts (the
/// agents' config directories), so a fresh default config can start at once.
pub fn create_default_mount_dirs(
    ctx: &crate::context::Context,
    project: &Project,
) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    for m in &Config::default().mounts {
        let host = vibebox_core::mounts::host_path(&m.spec.host, &ctx.host_home, project.dir());
        if !host.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&host)
                .with_context(|| format!("cannot create {}", host.display()))?;
            eprintln!(
                "vibebox: created {} (mounted by the default vibebox.toml)",
                host.display()
            );
        }
    }
    Ok(())
}
