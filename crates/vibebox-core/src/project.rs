//! A project: a directory with `vibebox.toml` and its local cache `.vibebox/`.
//!
//! ```text
//! <project>/vibebox.toml      project config (commit it)
//! <project>/.vibebox/         project cache, with its own .gitignore ("*")
//!   session.toml              this project's session id
//!   disk.qcow2                instance disk
//!   ssh/                      key pair and pinned host key
//!   supervisor.sock           control socket of the running supervisor
//!   logs/                     supervisor, console and network logs
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use uuid::Uuid;

use crate::config::{CONFIG_FILE, DEFAULT_CONFIG};
use crate::diagnostic::{FileProblem, FileProblems};

/// Name of the project cache directory.
pub const STATE_DIR: &str = ".vibebox";
/// Name of the file holding the session id inside [`STATE_DIR`].
pub const SESSION_FILE: &str = "session.toml";

/// Problems with a project's files.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `vibebox init` found a config already there.
    #[error("{} already exists; vibebox init never overwrites it", path.display())]
    ConfigExists {
        /// The existing config.
        path: PathBuf,
    },
    /// `.vibebox/session.toml` is not valid.
    #[error("{0}")]
    BadSessionFile(FileProblems),
    /// `.vibebox/` is, or holds, something vibebox never makes there (a
    /// symlink, a device, a FIFO): typically a repository that ships it.
    #[error("{} is {what}; vibebox never makes that in .vibebox/ and will not write through it", path.display())]
    UnsafeState {
        /// The offending path.
        path: PathBuf,
        /// What it is.
        what: String,
    },
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> ProjectError + 'p {
    move |source| ProjectError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Deserialize)]
struct RawSessionFile {
    id: Spanned<String>,
}

#[derive(Serialize)]
struct SessionFileOut {
    id: String,
}

/// A project directory and the paths of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    dir: PathBuf,
}

impl Project {
    /// The project at `dir` (made absolute, symlinks resolved when it exists).
    pub fn at(dir: &Path) -> Project {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| crate::mounts::normalize(dir));
        Project { dir }
    }

    /// The nearest ancestor of `start` (itself included) that has `vibebox.toml`,
    /// else `start` itself.
    pub fn find(start: &Path) -> Project {
        let start = Project::at(start).dir;
        let found = start
            .ancestors()
            .find(|d| d.join(CONFIG_FILE).is_file())
            .unwrap_or(&start);
        Project {
            dir: found.to_path_buf(),
        }
    }

    /// The project directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The project's name: the last component of its directory.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "project".into())
    }

    /// `<project>/vibebox.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// `<project>/.vibebox/`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }

    /// `<project>/.vibebox/session.toml`.
    pub fn session_file(&self) -> PathBuf {
        self.state_dir().join(SESSION_FILE)
    }

    /// `<project>/.vibebox/disk.qcow2`.
    pub fn disk_path(&self) -> PathBuf {
        self.state_dir().join("disk.qcow2")
    }

    /// `<project>/.vibebox/ssh/`.
    pub fn ssh_dir(&self) -> PathBuf {
        self.state_dir().join("ssh")
    }

    /// `<project>/.vibebox/supervisor.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir().join("supervisor.sock")
    }

    /// `<project>/.vibebox/logs/`.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir().join("logs")
    }

    /// Whether `vibebox.toml` exists.
    pub fn has_config(&self) -> bool {
        self.config_path().is_file()
    }

    /// Writes the default `vibebox.toml`; refuses to replace an existing one.
    ///
    /// The file appears whole or not at all (written aside, then hard-linked
    /// into place), so a concurrent reader never sees half a config.
    pub fn write_default_config(&self) -> Result<(), ProjectError> {
        let path = self.config_path();
        if path.exists() {
            return Err(ProjectError::ConfigExists { path });
        }
        let tmp = self
            .dir
            .join(format!(".{CONFIG_FILE}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            file.write_all(DEFAULT_CONFIG.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err("cannot write", &tmp))?;
            match fs::hard_link(&tmp, &path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(ProjectError::ConfigExists { path: path.clone() })
                }
                Err(e) => Err(io_err("cannot create", &path)(e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Checks `.vibebox/` before vibebox writes in it: it must be a real
    /// directory holding only directories, regular files and sockets — no
    /// symlink (which would make vibebox write elsewhere), device or FIFO.
    /// A repository that ships `.vibebox/` is refused here. Sets it to 0700.
    pub fn check_state_dir(&self) -> Result<(), ProjectError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = self.state_dir();
        let unsafe_state = |path: PathBuf, what: String| ProjectError::UnsafeState { path, what };
        let meta = match fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot read", &dir)(e)),
        };
        let describe = |ft: fs::FileType, path: &Path| -> Option<String> {
            if ft.is_symlink() {
                let to = fs::read_link(path).unwrap_or_default();
                Some(format!("a symlink to {}", to.display()))
            } else if ft.is_dir() || ft.is_file() || ft.is_socket() {
                None
            } else {
                Some("a device or FIFO".to_string())
            }
        };
        if let Some(what) = describe(meta.file_type(), &dir) {
            return Err(unsafe_state(dir, what));
        }
        if !meta.is_dir() {
            return Err(unsafe_state(dir, "not a directory".into()));
        }
        let mut stack = vec![dir.clone()];
        let mut seen = 0usize;
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d)
                .map_err(io_err("cannot read", &d))?
                .flatten()
            {
                seen += 1;
                if seen > 100_000 {
                    return Err(unsafe_state(dir, "holding more than 100000 files".into()));
                }
                let ft = e.file_type().map_err(io_err("cannot read", &e.path()))?;
                if let Some(what) = describe(ft, &e.path()) {
                    return Err(unsafe_state(e.path(), what));
                }
                // The container runtime's layers hold the box's own root tree
                // (its files, symlinks and whiteouts): only the box reads them.
                let layer = d == dir.join("container")
                    && (e.file_name() == "upper" || e.file_name() == "work");
                if ft.is_dir() && !layer {
                    stack.push(e.path());
                }
            }
        }
        if meta.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("cannot protect", &dir))?;
        }
        Ok(())
    }

    /// Creates `.vibebox/` (0700) and its `.gitignore` when missing.
    pub fn ensure_state_dir(&self) -> Result<(), ProjectError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.state_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("cannot create", &dir))?;
        self.check_state_dir()?;
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            write_atomic(&ignore, b"*\n")?;
        }
        Ok(())
    }

    /// The session id in `.vibebox/session.toml`, if the file exists.
    pub fn read_session_id(&self) -> Result<Option<Uuid>, ProjectError> {
        let path = self.session_file();
        let src = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let help = format!(
            "fix the id, or delete {} to give this project a new session",
            self.state_dir().display()
        );
        let raw: RawSessionFile = toml::from_str(&src).map_err(|e| {
            ProjectError::BadSessionFile(FileProblems(vec![FileProblem::at(
                &path,
                &src,
                e.span(),
                None,
                format!("not a valid session file: {}", e.message()),
            )
            .with_help(help.clone())]))
        })?;
        match Uuid::parse_str(raw.id.get_ref()) {
            Ok(id) if id.get_version_num() == 7 => Ok(Some(id)),
            _ => Err(ProjectError::BadSessionFile(FileProblems(vec![
                FileProblem::at(
                    &path,
                    &src,
                    Some(raw.id.span()),
                    Some("id".into()),
                    format!("\"{}\" is not a UUIDv7 session id", raw.id.get_ref()),
                )
                .with_help(help),
            ]))),
        }
    }

    /// Writes `.vibebox/session.toml` atomically.
    pub fn write_session_id(&self, id: Uuid) -> Result<(), ProjectError> {
        let text = toml::to_string(&SessionFileOut { id: id.to_string() }).map_err(|e| {
            io_err("cannot serialise", &self.session_file())(std::io::Error::other(e))
        })?;
        let text = format!(
            "# The id of this project's vibebox session. Local state: never commit it.\n{text}"
        );
        write_atomic(&self.session_file(), text.as_bytes())
    }
}

/// How much of the host's disk a session uses (allocated blocks: sparse
/// files count for what they hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// The instance disk (`.vibebox/disk.qcow2`).
    pub disk_bytes: u64,
    /// Saved machine state (`.vibebox/state/`: RAM and devices).
    pub state_bytes: u64,
    /// The container runtime's writable layer (`.vibebox/container/`; what
    /// the box's root keeps private to it is not counted: the host user
    /// cannot read it).
    pub container_bytes: u64,
}

impl DiskUsage {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.disk_bytes + self.state_bytes + self.container_bytes
    }
}

/// The host disk `path` takes (allocated blocks; a directory: all it holds,
/// without following symlinks).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.blocks() * 512,
        Ok(m) if m.is_dir() => fs::read_dir(path)
            .map(|rd| rd.flatten().map(|e| allocated_bytes(&e.path())).sum())
            .unwrap_or(0),
        _ => 0,
    }
}

impl Project {
    /// The host disk this project's session uses.
    pub fn disk_usage(&self) -> DiskUsage {
        DiskUsage {
            disk_bytes: allocated_bytes(&self.disk_path()),
            state_bytes: allocated_bytes(&self.state_dir().join("state")),
            container_bytes: allocated_bytes(&self.state_dir().join("container")),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
///
/// The temporary file is new (`O_EXCL`, a random name), so a symlink or file
/// that someone planted in the directory (the box can write the project) is
/// never followed or truncated; the rename replaces `path` itself, even when
/// it is a symlink, and never writes where it points.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    use std::os::unix::fs::PermissionsExt;
    // A file keeps its permissions; a new one gets rw-r--r--.
    let mode = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.permissions().mode() & 0o777,
        _ => 0o644,
    };
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                attempt += 1;
            }
            Err(e) => return Err(io_err("cannot create", &tmp)(e)),
        }
    };
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err("cannot write", &tmp));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("cannot replace", path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_walks_up_to_the_nearest_config() {
        let root = tempfile::tempdir().unwrap();
        let proj = root.path().join("p");
        let deep = proj.join("src/a");
        fs::create_dir_all(&deep).unwrap();
        assert_eq!(Project::find(&deep).dir(), fs::canonicalize(&deep).unwrap());
        fs::write(proj.join(CONFIG_FILE), "").unwrap();
        assert_eq!(Project::find(&deep).dir(), fs::canonicalize(&proj).unwrap());
    }

    #[test]
    fn atomic_writes_never_write_through_a_planted_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        fs::write(&victim, "host file\n").unwrap();
        let dir = root.path().join("p");
        fs::create_dir(&dir).unwrap();
        // The box plants a symlink where the file goes.
        let target = dir.join("vibebox.toml");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "host file\n");
        assert_eq!(fs::read_to_string(&target).unwrap(), "new\n");
        assert!(fs::symlink_metadata(&target).unwrap().is_file());
        // A file keeps its permissions, and no temporary file is left.
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&target, b"newer\n").unwrap();
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("vibebox.toml")]);
    }

    #[test]
    fn init_refuses_to_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let p = Project::at(root.path());
        p.write_default_config().unwrap();
        fs::write(p.config_path(), "# mine").unwrap();
        assert!(matches!(
            p.write_default_config(),
            Err(ProjectError::ConfigExists { .. })
        ));
        assert_eq!(fs::read_to_string(p.config_path()).unwrap(), "# mine");
    }

    #[test]
    fn a_shipped_state_dir_with_symlinks_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let p = Project::at(root.path());
        p.ensure_state_dir().unwrap();
        let mode = fs::metadata(p.state_dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::os::unix::fs::symlink("/etc", p.state_dir().join("logs")).unwrap();
        let e = p.check_state_dir().unwrap_err();
        assert!(e.to_string().contains("a symlink to /etc"), "{e}");
        fs::remove_file(p.state_dir().join("logs")).unwrap();
        fs::create_dir(p.state_dir().join("ssh")).unwrap();
        std::os::unix::fs::symlink("/tmp/x", p.state_dir().join("ssh/id_ed25519")).unwrap();
        assert!(p.check_state_dir().is_err());
        fs::remove_dir_all(p.state_dir()).unwrap();
        std::os::unix::fs::symlink("/tmp", p.state_dir()).unwrap();
        assert!(p.check_state_dir().is_err());
    }

    #[test]
    fn session_file_round_trip_and_errors() {
        let root = tempfile::tempdir().unwrap();
        let p = Project::at(root.path());
        p.ensure_state_dir().unwrap();
        assert_eq!(
            fs::read_to_string(p.state_dir().join(".gitignore")).unwrap(),
            "*\n"
        );
        assert_eq!(p.read_session_id().unwrap(), None);
        let id = Uuid::now_v7();
        p.write_session_id(id).unwrap();
        assert_eq!(p.read_session_id().unwrap(), Some(id));
        fs::write(p.session_file(), "\nid = \"nope\"\n").unwrap();
        let Err(ProjectError::BadSessionFile(e)) = p.read_session_id() else {
            panic!()
        };
        assert_eq!(e.0[0].location.unwrap().line, 2);
        fs::write(p.session_file(), "id = ").unwrap();
        assert!(p.read_session_id().is_err());
    }
}
