//! The global session index, `$VIBEBOX_HOME/sessions.toml`.
//!
//! One entry per session: id, directory, creation time, last activity. The
//! index is shared by every `vibebox` process of the user, so each change
//! happens under an exclusive lock (`sessions.lock`, `flock`), is written to a
//! temporary file, fsynced and renamed over the index: a writer killed at any
//! point leaves either the old index or the new one, never a torn file.
//!
//! Entries whose `<directory>/.vibebox/` is gone are dropped by every read
//! through [`Index::update`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use uuid::Uuid;

use crate::diagnostic::{FileProblem, FileProblems};
use crate::project::STATE_DIR;

/// File name of the index inside `VIBEBOX_HOME`.
pub const INDEX_FILE: &str = "sessions.toml";
const LOCK_FILE: &str = "sessions.lock";
const TMP_PREFIX: &str = ".sessions.toml.";
const FORMAT_VERSION: i64 = 1;

/// One session as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionEntry {
    /// The session id (UUIDv7).
    pub id: Uuid,
    /// The project directory (absolute).
    pub directory: PathBuf,
    /// When the session was created.
    pub created: Timestamp,
    /// When a client last connected.
    pub last_active: Timestamp,
    /// The session this one was forked from (`vibebox fork`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<Uuid>,
}

/// Problems with the index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading, writing or locking failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file is not a valid index.
    #[error("{0}")]
    Corrupt(FileProblems),
}

impl IndexError {
    fn io<'p>(
        action: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(std::io::Error) -> IndexError + 'p {
        move |source| IndexError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Deserialize)]
struct RawIndex {
    version: Option<Spanned<i64>>,
    #[serde(default)]
    session: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    id: Spanned<String>,
    directory: Spanned<String>,
    created: Option<Spanned<String>>,
    last_active: Spanned<String>,
    forked_from: Option<Spanned<String>>,
}

#[derive(Serialize)]
struct IndexOut<'a> {
    version: i64,
    session: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    id: String,
    directory: &'a str,
    created: String,
    last_active: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    forked_from: Option<String>,
}

/// The index of one `VIBEBOX_HOME`.
#[derive(Debug, Clone)]
pub struct Index {
    dir: PathBuf,
}

/// Holds the index lock until dropped.
#[derive(Debug)]
pub struct IndexLock {
    _file: File,
}

impl Index {
    /// The index kept in `home` (the `VIBEBOX_HOME` directory).
    pub fn new(home: &Path) -> Index {
        Index {
            dir: home.to_path_buf(),
        }
    }

    /// Path of `sessions.toml`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(INDEX_FILE)
    }

    /// Takes the exclusive lock, waiting for other writers.
    pub fn lock(&self) -> Result<IndexLock, IndexError> {
        fs::create_dir_all(&self.dir).map_err(IndexError::io("cannot create", &self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(IndexError::io("cannot open", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| IndexError::io("cannot lock", &path)(e.into()))?;
        Ok(IndexLock { _file: file })
    }

    /// Reads the index without locking (the file is only ever replaced whole).
    pub fn read(&self) -> Result<Vec<SessionEntry>, IndexError> {
        let path = self.path();
        match fs::read_to_string(&path) {
            Ok(src) => parse(&src, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(IndexError::io("cannot read", &path)(e)),
        }
    }

    /// Under the lock: reads the index, drops entries whose `.vibebox/` is gone,
    /// lets `f` change the entries, and writes the result if anything changed.
    pub fn update<R, E>(
        &self,
        f: impl FnOnce(&mut Vec<SessionEntry>) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<IndexError>,
    {
        let _lock = self.lock()?;
        self.remove_stale_temp_files();
        let before = self.read()?;
        let mut entries: Vec<SessionEntry> = before
            .iter()
            .filter(|e| e.directory.join(STATE_DIR).is_dir())
            .cloned()
            .collect();
        let result = f(&mut entries)?;
        if entries != before {
            self.write(&entries)?;
        }
        Ok(result)
    }

    /// Writes `entries` atomically: temp file, fsync, rename, fsync the directory.
    /// Call only while holding the lock.
    fn write(&self, entries: &[SessionEntry]) -> Result<(), IndexError> {
        let out = IndexOut {
            version: FORMAT_VERSION,
            session: entries
                .iter()
                .map(|e| EntryOut {
                    id: e.id.to_string(),
                    directory: e.directory.to_str().unwrap_or_default(),
                    created: e.created.to_string(),
                    last_active: e.last_active.to_string(),
                    forked_from: e.forked_from.map(|p| p.to_string()),
                })
                .collect(),
        };
        let text = toml::to_string(&out)
            .map_err(|e| IndexError::io("cannot serialise", &self.dir)(std::io::Error::other(e)))?;
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}.tmp", std::process::id()));
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(IndexError::io("cannot create", &tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(IndexError::io("cannot write", &tmp))?;
        let path = self.path();
        fs::rename(&tmp, &path).map_err(IndexError::io("cannot replace", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(IndexError::io("cannot sync", &self.dir))?;
        Ok(())
    }

    /// Temp files left by writers that were killed; only called under the lock.
    fn remove_stale_temp_files(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn parse(src: &str, path: &Path) -> Result<Vec<SessionEntry>, IndexError> {
    let help = format!(
        "fix the entry by hand, or remove {} (each project re-registers its session, kept in .vibebox/session.toml, on its next `vibebox`)",
        path.display()
    );
    let problem = |span, key: Option<String>, msg: String| {
        FileProblem::at(path, src, span, key, msg).with_help(help.clone())
    };
    let raw: RawIndex = toml::from_str(src).map_err(|e| {
        IndexError::Corrupt(FileProblems(vec![problem(
            e.span(),
            None,
            format!("not a valid session index: {}", e.message()),
        )]))
    })?;
    let mut problems = Vec::new();
    if let Some(v) = &raw.version {
        if *v.get_ref() != FORMAT_VERSION {
            problems.push(problem(
                Some(v.span()),
                Some("version".into()),
                format!(
                    "index format version {} is not supported (this vibebox reads version {FORMAT_VERSION})",
                    v.get_ref()
                ),
            ));
        }
    }
    let mut entries: Vec<SessionEntry> = Vec::with_capacity(raw.session.len());
    let mut ids = std::collections::HashSet::with_capacity(raw.session.len());
    for (i, r) in raw.session.iter().enumerate() {
        let key = |k: &str| Some(format!("session[{i}].{k}"));
        let id = match Uuid::parse_str(r.id.get_ref()) {
            Ok(id) if id.get_version_num() == 7 => Some(id),
            _ => {
                problems.push(problem(
                    Some(r.id.span()),
                    key("id"),
                    format!("\"{}\" is not a UUIDv7 session id", r.id.get_ref()),
                ));
                None
            }
        };
        if let Some(id) = id {
            if !ids.insert(id) {
                problems.push(problem(
                    Some(r.id.span()),
                    key("id"),
                    format!("session {id} is listed twice"),
                ));
            }
        }
        let directory = PathBuf::from(r.directory.get_ref());
        if !directory.is_absolute() {
            problems.push(problem(
                Some(r.directory.span()),
                key("directory"),
                format!("\"{}\" is not an absolute path", r.directory.get_ref()),
            ));
        }
        let time = |s: &Spanned<String>, k: &str, problems: &mut Vec<FileProblem>| {
            s.get_ref()
                .parse::<Timestamp>()
                .map_err(|_| {
                    problems.push(problem(
                        Some(s.span()),
                        key(k),
                        format!("\"{}\" is not an RFC 3339 time", s.get_ref()),
                    ))
                })
                .ok()
        };
        let last_active = time(&r.last_active, "last_active", &mut problems);
        let created = match &r.created {
            Some(c) => time(c, "created", &mut problems),
            None => last_active,
        };
        let forked_from = match &r.forked_from {
            None => Some(None),
            Some(f) => match Uuid::parse_str(f.get_ref()) {
                Ok(p) => Some(Some(p)),
                Err(_) => {
                    problems.push(problem(
                        Some(f.span()),
                        key("forked_from"),
                        format!("\"{}\" is not a session id", f.get_ref()),
                    ));
                    None
                }
            },
        };
        if let (Some(id), Some(created), Some(last_active), Some(forked_from)) =
            (id, created, last_active, forked_from)
        {
            entries.push(SessionEntry {
                id,
                directory,
                created,
                last_active,
                forked_from,
            });
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(IndexError::Corrupt(FileProblems(problems)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path) -> SessionEntry {
        let now = Timestamp::now();
        SessionEntry {
            id: Uuid::now_v7(),
            directory: dir.to_path_buf(),
            created: now,
            last_active: now,
            forked_from: None,
        }
    }

    #[test]
    fn round_trips_and_prunes_entries_without_state_dir() {
        let home = tempfile::tempdir().unwrap();
        let proj = tempfile::tempdir().unwrap();
        fs::create_dir(proj.path().join(STATE_DIR)).unwrap();
        let index = Index::new(home.path());
        let mut kept = entry(proj.path());
        kept.forked_from = Some(Uuid::now_v7());
        let gone = entry(Path::new("/nonexistent/project"));
        index
            .update(|e| {
                e.push(kept.clone());
                e.push(gone.clone());
                Ok::<_, IndexError>(())
            })
            .unwrap();
        assert_eq!(index.read().unwrap().len(), 2);
        let seen = index.update(|e| Ok::<_, IndexError>(e.clone())).unwrap();
        assert_eq!(seen, vec![kept.clone()]);
        assert_eq!(index.read().unwrap(), vec![kept]);
    }

    #[test]
    fn corrupt_files_name_the_line_and_change_nothing() {
        let home = tempfile::tempdir().unwrap();
        let index = Index::new(home.path());
        let src = "version = 1\n[[session]]\nid = \"not-a-uuid\"\ndirectory = \"rel/dir\"\nlast_active = \"yesterday\"\n";
        fs::write(index.path(), src).unwrap();
        let Err(IndexError::Corrupt(p)) = index.read() else {
            panic!("expected corrupt")
        };
        let lines: Vec<_> = p.0.iter().map(|p| p.location.unwrap().line).collect();
        assert_eq!(lines, vec![3, 4, 5]);
        let r = index.update(|_| Ok::<_, IndexError>(()));
        assert!(r.is_err());
        assert_eq!(fs::read_to_string(index.path()).unwrap(), src);
    }

    #[test]
    fn truncated_file_is_a_syntax_error() {
        let home = tempfile::tempdir().unwrap();
        let index = Index::new(home.path());
        fs::write(index.path(), "version = 1\n[[session]]\nid = \"0190").unwrap();
        let Err(IndexError::Corrupt(p)) = index.read() else {
            panic!("expected corrupt")
        };
        assert_eq!(p.0[0].location.unwrap().line, 3);
    }

    #[test]
    fn duplicate_ids_and_wrong_versions_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let index = Index::new(home.path());
        let id = Uuid::now_v7();
        let t = Timestamp::now();
        let src = format!(
            "version = 2\n[[session]]\nid = \"{id}\"\ndirectory = \"/a\"\nlast_active = \"{t}\"\n[[session]]\nid = \"{id}\"\ndirectory = \"/b\"\nlast_active = \"{t}\"\n"
        );
        fs::write(index.path(), src).unwrap();
        let Err(IndexError::Corrupt(p)) = index.read() else {
            panic!("expected corrupt")
        };
        assert_eq!(p.0.len(), 2, "{p}");
        let v4 = "8f14e45f-ceea-467f-a0e6-1f0b2a9c3d4e";
        fs::write(
            index.path(),
            format!("[[session]]\nid = \"{v4}\"\ndirectory = \"/a\"\nlast_active = \"{t}\"\n"),
        )
        .unwrap();
        assert!(index.read().is_err());
    }

    #[test]
    fn stale_temp_files_are_removed_under_the_lock() {
        let home = tempfile::tempdir().unwrap();
        let index = Index::new(home.path());
        let stale = home.path().join(".sessions.toml.999999.tmp");
        fs::write(&stale, "garbage").unwrap();
        index.update(|_| Ok::<_, IndexError>(())).unwrap();
        assert!(!stale.exists());
    }
}
