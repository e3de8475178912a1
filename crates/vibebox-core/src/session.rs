//! Sessions: the one machine of a project, and how a project finds it.
//!
//! A project's session id lives in `.vibebox/session.toml`, so it survives a
//! rename or move of the directory; the global [`Index`] follows the directory.
//! [`connect`] is the single place that creates sessions, and it runs under
//! the index lock, so concurrent `vibebox` processes in one directory agree on
//! one session.

use std::path::PathBuf;

use jiff::Timestamp;
use uuid::Uuid;

use crate::index::{Index, IndexError, SessionEntry};
use crate::project::{Project, ProjectError};

/// What [`connect`] had to do to find the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The project already had this session, at this directory.
    Existing,
    /// A new session was created.
    Created,
    /// The directory was renamed or moved; the index now follows it.
    Moved {
        /// Where the index had the session before.
        from: PathBuf,
    },
    /// The directory is a copy of another project that is still there: the copy
    /// got a new session, the original keeps its own.
    Copied {
        /// The session of the original.
        original: Uuid,
    },
    /// The session was missing from the index (index removed); it is back.
    Registered,
}

/// Errors while connecting a project to its session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The index could not be used.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The project's files could not be used.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The index stores directories as UTF-8 text.
    #[error("the project directory {} is not valid UTF-8; vibebox needs a UTF-8 path", .0.display())]
    NonUtf8Path(PathBuf),
}

/// Finds or creates the session of `project` and marks it active at `now`.
///
/// Creates `.vibebox/` (with its `.gitignore`) and `.vibebox/session.toml` when
/// missing. The config file is not touched.
pub fn connect(
    index: &Index,
    project: &Project,
    now: Timestamp,
) -> Result<(SessionEntry, Found), SessionError> {
    if project.dir().to_str().is_none() {
        return Err(SessionError::NonUtf8Path(project.dir().to_path_buf()));
    }
    index.update(|entries| {
        project.ensure_state_dir()?;
        let dir = project.dir().to_path_buf();
        let existing = project.read_session_id()?;
        let (id, found) = match existing {
            None => (Uuid::now_v7(), Found::Created),
            Some(id) => match entries.iter().find(|e| e.id == id) {
                Some(e) if e.directory == dir => (id, Found::Existing),
                Some(e) => {
                    let other = Project::at(&e.directory);
                    if other.dir() != dir && other.read_session_id().ok().flatten() == Some(id) {
                        (Uuid::now_v7(), Found::Copied { original: id })
                    } else {
                        (
                            id,
                            Found::Moved {
                                from: e.directory.clone(),
                            },
                        )
                    }
                }
                None => (id, Found::Registered),
            },
        };
        if existing != Some(id) {
            project.write_session_id(id)?;
        }
        let (created, forked_from) = entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| (e.created, e.forked_from))
            .unwrap_or((now, None));
        // One directory has one session; one session has one directory.
        entries.retain(|e| e.id != id && e.directory != dir);
        let entry = SessionEntry {
            id,
            directory: dir,
            created,
            last_active: now,
            forked_from,
        };
        entries.push(entry.clone());
        Ok((entry, found))
    })
}

/// Makes the index follow a project that moved, without creating anything:
/// when `project` holds a session whose index entry names another directory
/// (which no longer holds that session: a copy is not a move), or whose entry
/// was dropped (the index drops entries whose `.vibebox/` is gone), the
/// entry gets this directory. Returns whether the index changed.
pub fn follow_move(index: &Index, project: &Project, now: Timestamp) -> Result<bool, SessionError> {
    let Some(id) = project.read_session_id()? else {
        return Ok(false);
    };
    let dir = project.dir().to_path_buf();
    if dir.to_str().is_none() {
        return Err(SessionError::NonUtf8Path(dir));
    }
    index.update(|entries| {
        if let Some(e) = entries.iter().find(|e| e.id == id) {
            if e.directory == dir {
                return Ok(false);
            }
            if Project::at(&e.directory).read_session_id().ok().flatten() == Some(id) {
                // Still there: this directory is a copy; a start gives it its own.
                return Ok(false);
            }
        }
        let (created, last_active, forked_from) = entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| (e.created, e.last_active, e.forked_from))
            .unwrap_or((now, now, None));
        entries.retain(|e| e.id != id && e.directory != dir);
        entries.push(SessionEntry {
            id,
            directory: dir.clone(),
            created,
            last_active,
            forked_from,
        });
        Ok(true)
    })
}

/// Which sessions an id prefix names.
pub fn match_prefix<'a>(entries: &'a [SessionEntry], prefix: &str) -> Vec<&'a SessionEntry> {
    let prefix = prefix.to_ascii_lowercase();
    if prefix.is_empty() {
        return Vec::new();
    }
    entries
        .iter()
        .filter(|e| e.id.to_string().starts_with(&prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn setup() -> (tempfile::TempDir, Index, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let index = Index::new(&root.path().join("home"));
        let proj = root.path().join("proj");
        fs::create_dir(&proj).unwrap();
        (root, index, proj)
    }

    #[test]
    fn creates_once_then_finds_the_same_session() {
        let (_root, index, proj) = setup();
        let p = Project::at(&proj);
        let (a, f) = connect(&index, &p, Timestamp::now()).unwrap();
        assert_eq!(f, Found::Created);
        assert_eq!(a.id.get_version_num(), 7);
        assert_eq!(a.id.get_variant(), uuid::Variant::RFC4122);
        let later = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let (b, f) = connect(&index, &p, later).unwrap();
        assert_eq!(f, Found::Existing);
        assert_eq!(b.id, a.id);
        assert_eq!(b.last_active, later);
        assert_eq!(b.created, a.created);
        assert_eq!(index.read().unwrap().len(), 1);
    }

    #[test]
    fn the_index_follows_a_move_but_not_a_copy() {
        let (root, index, proj) = setup();
        let (a, _) = connect(&index, &Project::at(&proj), Timestamp::now()).unwrap();
        // Nothing to follow: same directory, or no session.
        assert!(!follow_move(&index, &Project::at(&proj), Timestamp::now()).unwrap());
        let bare = root.path().join("bare");
        fs::create_dir(&bare).unwrap();
        assert!(!follow_move(&index, &Project::at(&bare), Timestamp::now()).unwrap());
        assert!(!bare.join(".vibebox").exists());
        // A copy is not a move.
        let copy = root.path().join("copy");
        fs::create_dir_all(copy.join(".vibebox")).unwrap();
        fs::copy(
            proj.join(".vibebox/session.toml"),
            copy.join(".vibebox/session.toml"),
        )
        .unwrap();
        assert!(!follow_move(&index, &Project::at(&copy), Timestamp::now()).unwrap());
        assert_eq!(index.read().unwrap()[0].directory, proj);
        fs::remove_dir_all(&copy).unwrap();
        // A move is followed.
        let moved = root.path().join("moved");
        fs::rename(&proj, &moved).unwrap();
        assert!(follow_move(&index, &Project::at(&moved), Timestamp::now()).unwrap());
        let entries = index.read().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].id, &entries[0].directory), (a.id, &moved));
        // A dropped entry is registered again.
        index
            .update(|e| {
                e.clear();
                Ok::<_, SessionError>(())
            })
            .unwrap();
        assert!(follow_move(&index, &Project::at(&moved), Timestamp::now()).unwrap());
        assert_eq!(index.read().unwrap()[0].id, a.id);
        assert!(!follow_move(&index, &Project::at(&moved), Timestamp::now()).unwrap());
    }

    #[test]
    fn a_moved_project_keeps_its_id_and_a_copy_gets_a_new_one() {
        let (root, index, proj) = setup();
        let (a, _) = connect(&index, &Project::at(&proj), Timestamp::now()).unwrap();
        let moved = root.path().join("moved");
        fs::rename(&proj, &moved).unwrap();
        let (b, f) = connect(&index, &Project::at(&moved), Timestamp::now()).unwrap();
        assert_eq!(b.id, a.id);
        assert!(
            matches!(f, Found::Registered | Found::Moved { .. }),
            "{f:?}"
        );
        assert_eq!(index.read().unwrap().len(), 1);

        let copy = root.path().join("copy");
        fs::create_dir_all(copy.join(".vibebox")).unwrap();
        fs::copy(
            moved.join(".vibebox/session.toml"),
            copy.join(".vibebox/session.toml"),
        )
        .unwrap();
        let (c, f) = connect(&index, &Project::at(&copy), Timestamp::now()).unwrap();
        assert_eq!(f, Found::Copied { original: a.id });
        assert_ne!(c.id, a.id);
        let (d, f) = connect(&index, &Project::at(&moved), Timestamp::now()).unwrap();
        assert_eq!((d.id, f), (a.id, Found::Existing));
        assert_eq!(index.read().unwrap().len(), 2);
    }

    #[test]
    fn non_utf8_directories_are_refused_before_touching_the_index() {
        use std::os::unix::ffi::OsStrExt;
        let (root, index, _) = setup();
        let odd = root.path().join(std::ffi::OsStr::from_bytes(b"bad\xff"));
        fs::create_dir(&odd).unwrap();
        let r = connect(&index, &Project::at(&odd), Timestamp::now());
        assert!(matches!(r, Err(SessionError::NonUtf8Path(_))));
        assert!(index.read().unwrap().is_empty());
        assert!(!odd.join(".vibebox").exists());
    }

    #[test]
    fn prefixes_match_like_git() {
        let (_root, index, proj) = setup();
        let (a, _) = connect(&index, &Project::at(&proj), Timestamp::now()).unwrap();
        let entries = index.read().unwrap();
        let s = a.id.to_string();
        assert_eq!(match_prefix(&entries, &s[..6]).len(), 1);
        assert_eq!(match_prefix(&entries, &s.to_uppercase()).len(), 1);
        assert!(match_prefix(&entries, "").is_empty());
        assert!(match_prefix(&entries, "zz").is_empty());
    }
}
