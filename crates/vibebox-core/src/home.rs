//! Where vibebox keeps its global state: `VIBEBOX_HOME`, else `~/.vibebox`.

use std::path::PathBuf;

/// The environment variable that overrides the global state directory.
pub const HOME_ENV: &str = "VIBEBOX_HOME";

/// The host user's home directory (`$HOME`), used to expand `~` in mounts.
pub fn host_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)
}

/// The global state directory: `$VIBEBOX_HOME`, else `~/.vibebox`.
pub fn vibebox_home() -> Option<PathBuf> {
    match std::env::var_os(HOME_ENV).filter(|h| !h.is_empty()) {
        Some(h) => Some(PathBuf::from(h)),
        None => host_home().map(|h| h.join(".vibebox")),
    }
}

/// `$VIBEBOX_HOME/images/`: the base images.
pub fn images_dir(home: &std::path::Path) -> PathBuf {
    home.join("images")
}
