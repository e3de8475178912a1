//! Mounts: the `host:guest[:read-only|read-write]` strings of `box.mounts`, and
//! their resolution to absolute host and guest paths.
//!
//! Rules (shared with the macOS vibebox format):
//! - `~` on the host side is the host user's home; on the guest side it is the
//!   guest user's home (`/home/vibecoder`).
//! - A relative host path is relative to the project directory; a relative guest
//!   path is under the guest user's home.
//! - A two-part entry `host:guest` is read-write, as in the macOS vibebox and
//!   `docker -v`: the same file means the same thing everywhere.
//! - `..` is refused in guest paths, and so are the guest's system directories.
//! - The project itself is always mounted read-write at `~/<project-name>`.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The guest user's name inside the box.
pub const GUEST_USER: &str = "vibecoder";
/// The guest user's home directory inside the box.
pub const GUEST_HOME: &str = "/home/vibecoder";

/// Guest paths that may not be mounted over, exactly.
const RESERVED_GUEST_PATHS: &[&str] = &[
    "/", "/bin", "/boot", "/etc", "/home", "/lib", "/lib64", "/sbin", "/usr", "/var", GUEST_HOME,
];
/// Guest directories under which nothing may be mounted (kernel and runtime state).
const RESERVED_GUEST_TREES: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// Whether the guest may write to a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// The guest can read but never write (enforced on the host).
    ReadOnly,
    /// The guest can read and write.
    ReadWrite,
}

impl MountMode {
    /// The spelling used in `vibebox.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountMode::ReadOnly => "read-only",
            MountMode::ReadWrite => "read-write",
        }
    }

    /// The short form shown in tables (`ro`/`rw`).
    pub fn short(self) -> &'static str {
        match self {
            MountMode::ReadOnly => "ro",
            MountMode::ReadWrite => "rw",
        }
    }
}

impl fmt::Display for MountMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a mount string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountSpecError {
    /// Not 2 or 3 colon-separated parts.
    #[error("a mount has 2 or 3 parts separated by `:`, this one has {0}")]
    WrongParts(usize),
    /// The host part is empty.
    #[error("the host path is empty")]
    EmptyHost,
    /// The guest part is empty.
    #[error("the guest path is empty")]
    EmptyGuest,
    /// The mode is not one of the two allowed words.
    #[error("unknown mode `{0}`")]
    BadMode(String),
    /// `~user` forms are not supported.
    #[error("`{0}` names another user's home; only `~` and `~/...` are supported")]
    TildeUser(String),
    /// A guest path that climbs with `..`.
    #[error("the guest path `{0}` contains `..`")]
    GuestParent(String),
    /// A control character (newline, tab, NUL...) in a path.
    #[error("the path `{0}` contains a control character")]
    ControlChar(String),
    /// A guest path that would hide part of the guest system.
    #[error("the guest path `{0}` is reserved by the guest system")]
    GuestReserved(String),
}

impl MountSpecError {
    /// What is allowed instead, for the help line.
    pub fn help(&self) -> &'static str {
        match self {
            MountSpecError::WrongParts(_) | MountSpecError::EmptyHost | MountSpecError::EmptyGuest => {
                "write \"host:guest\" or \"host:guest:read-only\" or \"host:guest:read-write\", e.g. \"~/.codex:~/.codex:read-write\""
            }
            MountSpecError::BadMode(_) => "the mode is `read-only` or `read-write` (the default when omitted)",
            MountSpecError::TildeUser(_) => "write the path out, or use `~/...` for your own home",
            MountSpecError::GuestParent(_) => {
                "write the guest path without `..`: absolute (/data), under the home (~/data) or relative to the home (data)"
            }
            MountSpecError::ControlChar(_) => "remove the control character from the path",
            MountSpecError::GuestReserved(_) => {
                "choose a path under the guest user's home (~/name) or a new top-level directory (/data)"
            }
        }
    }
}

/// One parsed entry of `box.mounts`, before paths are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The host side as written.
    pub host: String,
    /// The guest side as written.
    pub guest: String,
    /// Read-write unless the entry says `read-only`.
    pub mode: MountMode,
}

impl MountSpec {
    /// Parses `host:guest[:read-only|read-write]`.
    ///
    /// ```
    /// use vibebox_core::mounts::{MountMode, MountSpec};
    /// let m = MountSpec::parse("~/.codex:~/.codex:read-write").unwrap();
    /// assert_eq!(m.mode, MountMode::ReadWrite);
    /// assert!(MountSpec::parse("/a:/b:rw-ish").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<MountSpec, MountSpecError> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, guest, mode) = match parts.as_slice() {
            [h, g] => (*h, *g, MountMode::ReadWrite),
            [h, g, m] => {
                let mode = match *m {
                    "read-only" => MountMode::ReadOnly,
                    "read-write" => MountMode::ReadWrite,
                    other => return Err(MountSpecError::BadMode(other.to_string())),
                };
                (*h, *g, mode)
            }
            _ => return Err(MountSpecError::WrongParts(parts.len())),
        };
        if host.is_empty() {
            return Err(MountSpecError::EmptyHost);
        }
        if guest.is_empty() {
            return Err(MountSpecError::EmptyGuest);
        }
        for p in [host, guest] {
            if p.chars().any(char::is_control) {
                return Err(MountSpecError::ControlChar(p.escape_debug().to_string()));
            }
            if p.starts_with('~') && p != "~" && !p.starts_with("~/") {
                return Err(MountSpecError::TildeUser(p.to_string()));
            }
        }
        // Validate the guest side now, so every error is reported at parse time.
        guest_path(guest)?;
        Ok(MountSpec {
            host: host.to_string(),
            guest: guest.to_string(),
            mode,
        })
    }
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.host, self.guest, self.mode)
    }
}

/// The absolute, normalised guest path for a guest path as written.
///
/// ```
/// use vibebox_core::mounts::guest_path;
/// assert_eq!(guest_path("~/.codex").unwrap(), "/home/vibecoder/.codex");
/// assert_eq!(guest_path("data/x/").unwrap(), "/home/vibecoder/data/x");
/// assert_eq!(guest_path("/opt//tools/.").unwrap(), "/opt/tools");
/// assert!(guest_path("~/../root").is_err());
/// assert!(guest_path("/proc/self").is_err());
/// ```
pub fn guest_path(written: &str) -> Result<String, MountSpecError> {
    let absolute = if written == "~" {
        GUEST_HOME.to_string()
    } else if let Some(rest) = written.strip_prefix("~/") {
        format!("{GUEST_HOME}/{rest}")
    } else if written.starts_with('/') {
        written.to_string()
    } else {
        format!("{GUEST_HOME}/{written}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in absolute.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(MountSpecError::GuestParent(written.to_string())),
            p => parts.push(p),
        }
    }
    let normal = format!("/{}", parts.join("/"));
    let reserved = RESERVED_GUEST_PATHS.contains(&normal.as_str())
        || RESERVED_GUEST_TREES
            .iter()
            .any(|t| normal == *t || normal.starts_with(&format!("{t}/")));
    if reserved {
        return Err(MountSpecError::GuestReserved(written.to_string()));
    }
    Ok(normal)
}

/// Lexically normalises an absolute path: drops `.`, folds `..`, never touches the disk.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push("/");
    }
    out
}

/// The absolute host path for a host path as written.
pub fn host_path(written: &str, host_home: &Path, project_dir: &Path) -> PathBuf {
    let joined = if written == "~" {
        host_home.to_path_buf()
    } else if let Some(r) = written.strip_prefix("~/") {
        host_home.join(r)
    } else {
        // `join` keeps an absolute `written` as it is.
        project_dir.join(written)
    };
    normalize(&joined)
}

/// Why the host side of a mount cannot be used for a start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The host path does not exist.
    #[error("the host path {} does not exist", .0.display())]
    Missing(PathBuf),
    /// The host path is not a directory.
    #[error("the host path {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A path inside the project that leads elsewhere through a symlink: the
    /// box can make symlinks in the project, so vibebox never follows them.
    #[error("the host path {} is inside the project but is (or goes through) a symlink to {}", lexical.display(), target.display())]
    SymlinkInProject {
        /// The path as written, made absolute.
        lexical: PathBuf,
        /// Where the symlink leads.
        target: PathBuf,
    },
}

impl SourceError {
    /// What to do about it, for the help line.
    pub fn help(&self) -> String {
        match self {
            SourceError::Missing(p) => format!(
                "create it (mkdir -p {}) or remove the entry from box.mounts",
                p.display()
            ),
            SourceError::NotADirectory(_) => "mount a directory".to_string(),
            SourceError::SymlinkInProject { target, .. } => format!(
                "the box can write symlinks in the project; if you meant {}, write that path in box.mounts",
                target.display()
            ),
        }
    }
}

/// The real host path of a mount's host side: symlinks followed (the result
/// is what consent covers), except that a path inside the project must not
/// lead elsewhere through a symlink, which the box could have made.
pub fn real_host_path(
    written: &str,
    host_home: &Path,
    project_dir: &Path,
) -> Result<PathBuf, SourceError> {
    let lexical = host_path(written, host_home, project_dir);
    let real =
        std::fs::canonicalize(&lexical).map_err(|_| SourceError::Missing(lexical.clone()))?;
    if lexical.starts_with(project_dir) && real != lexical {
        return Err(SourceError::SymlinkInProject {
            lexical,
            target: real,
        });
    }
    if !real.is_dir() {
        return Err(SourceError::NotADirectory(real));
    }
    Ok(real)
}

/// Where a resolved mount comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MountSource {
    /// The project directory itself (always present).
    Project,
    /// Entry `index` (0-based) of `box.mounts`.
    Config {
        /// Position in `box.mounts`.
        index: usize,
    },
}

/// A mount with absolute paths on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedMount {
    /// Absolute host path.
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    /// Read-only or read-write.
    pub mode: MountMode,
    /// Whether the host path exists right now.
    pub host_exists: bool,
    /// Where the mount comes from.
    pub source: MountSource,
}

/// The guest path of the project directory: `~/<project-name>`.
pub fn project_guest_path(project_dir: &Path) -> String {
    let name = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "project".to_string());
    format!("{GUEST_HOME}/{name}")
}

/// Resolves the project mount and every `box.mounts` entry.
pub fn resolve(specs: &[MountSpec], host_home: &Path, project_dir: &Path) -> Vec<ResolvedMount> {
    let project = normalize(project_dir);
    let mut out = vec![ResolvedMount {
        host_exists: project.is_dir(),
        host: project.clone(),
        guest: project_guest_path(&project),
        mode: MountMode::ReadWrite,
        source: MountSource::Project,
    }];
    for (index, spec) in specs.iter().enumerate() {
        let host = host_path(&spec.host, host_home, &project);
        // Parsing already validated the guest side.
        let guest = guest_path(&spec.guest).unwrap_or_else(|_| spec.guest.clone());
        out.push(ResolvedMount {
            host_exists: host.exists(),
            host,
            guest,
            mode: spec.mode,
            source: MountSource::Config { index },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_two_and_three_parts() {
        let m = MountSpec::parse("/a:/b").unwrap();
        assert_eq!((m.host.as_str(), m.guest.as_str()), ("/a", "/b"));
        // Two parts mean read-write, as in the macOS vibebox and `docker -v`.
        assert_eq!(m.mode, MountMode::ReadWrite);
        let m = MountSpec::parse("/a:/b:read-only").unwrap();
        assert_eq!(m.mode, MountMode::ReadOnly);
        let m = MountSpec::parse("~/x:y:read-write").unwrap();
        assert_eq!(m.mode, MountMode::ReadWrite);
    }

    #[test]
    fn refuses_wrong_part_counts() {
        assert_eq!(MountSpec::parse("/a"), Err(MountSpecError::WrongParts(1)));
        assert_eq!(
            MountSpec::parse("/a:/b:read-only:x"),
            Err(MountSpecError::WrongParts(4))
        );
        assert_eq!(MountSpec::parse(":/b"), Err(MountSpecError::EmptyHost));
        assert_eq!(MountSpec::parse("/a:"), Err(MountSpecError::EmptyGuest));
    }

    #[test]
    fn refuses_bad_modes_and_tilde_users() {
        assert_eq!(
            MountSpec::parse("/a:/b:rw"),
            Err(MountSpecError::BadMode("rw".into()))
        );
        assert!(matches!(
            MountSpec::parse("~root/x:/b"),
            Err(MountSpecError::TildeUser(_))
        ));
        assert!(matches!(
            MountSpec::parse("/a:~root"),
            Err(MountSpecError::TildeUser(_))
        ));
    }

    #[test]
    fn guest_paths_cannot_escape_or_hide_the_system() {
        for bad in [
            "..",
            "~/..",
            "a/../../etc",
            "/home/vibecoder/../../etc",
            "/",
            "/etc",
            "/etc/",
            "/usr",
            "/proc",
            "/proc/1",
            "/sys/kernel",
            "/dev/sda",
            "/run/sshd",
            "~",
            "/home",
            "/home/vibecoder",
            "//",
            "/./",
        ] {
            assert!(guest_path(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(guest_path("/etcetera").unwrap(), "/etcetera");
        assert_eq!(guest_path("/processes").unwrap(), "/processes");
        assert_eq!(guest_path("/etc/app").unwrap(), "/etc/app");
    }

    #[test]
    fn refuses_control_characters() {
        assert!(matches!(
            MountSpec::parse("/a\n:/b"),
            Err(MountSpecError::ControlChar(_))
        ));
    }

    #[test]
    fn host_paths_expand_tilde_and_relative() {
        let home = Path::new("/home/me");
        let proj = Path::new("/work/p");
        assert_eq!(host_path("~", home, proj), PathBuf::from("/home/me"));
        assert_eq!(
            host_path("~/.codex", home, proj),
            PathBuf::from("/home/me/.codex")
        );
        assert_eq!(host_path("../lib", home, proj), PathBuf::from("/work/lib"));
        assert_eq!(host_path("/abs/./x", home, proj), PathBuf::from("/abs/x"));
        assert_eq!(host_path("/../..", home, proj), PathBuf::from("/"));
    }

    #[test]
    fn resolve_puts_the_project_first_read_write() {
        let dir = tempfile::tempdir().unwrap();
        let proj = dir.path().join("my-app");
        std::fs::create_dir(&proj).unwrap();
        let specs = vec![MountSpec::parse("~/missing:~/m").unwrap()];
        let r = resolve(&specs, dir.path(), &proj);
        assert_eq!(r[0].guest, "/home/vibecoder/my-app");
        assert_eq!(r[0].mode, MountMode::ReadWrite);
        assert!(r[0].host_exists);
        assert_eq!(r[1].guest, "/home/vibecoder/m");
        assert!(!r[1].host_exists);
        assert_eq!(r[1].source, MountSource::Config { index: 0 });
    }

    #[test]
    fn real_host_paths_follow_symlinks_only_outside_the_project() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let proj = root.join("p");
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir_all(proj.join("data")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, proj.join("link")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("outside-link")).unwrap();
        assert_eq!(real_host_path("data", &root, &proj), Ok(proj.join("data")));
        assert!(matches!(
            real_host_path("link", &root, &proj),
            Err(SourceError::SymlinkInProject { .. })
        ));
        // Outside the project, the real path is what consent covers.
        assert_eq!(
            real_host_path("~/outside-link", &root, &proj),
            Ok(elsewhere)
        );
        assert!(matches!(
            real_host_path("~/none", &root, &proj),
            Err(SourceError::Missing(_))
        ));
        std::fs::write(root.join("f"), "").unwrap();
        assert!(matches!(
            real_host_path("~/f", &root, &proj),
            Err(SourceError::NotADirectory(_))
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = MountSpec::parse(&s);
        }

        #[test]
        fn valid_specs_round_trip(
            host in "(~/)?[a-zA-Z0-9_.-]{1,12}(/[a-zA-Z0-9_-]{1,8}){0,3}",
            guest in "(~/|/opt/)?[a-zA-Z0-9_-]{1,12}(/[a-zA-Z0-9_-]{1,8}){0,3}",
            rw in any::<bool>(),
        ) {
            let mode = if rw { "read-write" } else { "read-only" };
            let s = format!("{host}:{guest}:{mode}");
            let m = MountSpec::parse(&s).unwrap();
            prop_assert_eq!(m.to_string(), s);
            prop_assert_eq!(MountSpec::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn resolved_guest_paths_are_absolute_and_clean(g in "[~./a-z]{1,20}") {
            if let Ok(p) = guest_path(&g) {
                prop_assert!(p.starts_with('/'));
                prop_assert!(!p.split('/').any(|c| c == ".." || c == "."));
                prop_assert!(!RESERVED_GUEST_PATHS.contains(&p.as_str()));
                prop_assert!(!p.starts_with("/proc/") && !p.starts_with("/sys/"));
            }
        }
    }
}
