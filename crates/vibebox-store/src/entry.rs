//! The store's index: one small JSON object per save, and where things live.
//!
//! ```text
//! <root>/saves/<workspace>/<time>-<id>.json   the index entry (written last, once)
//! <root>/bundles/<id>.bundle                  the git bundle (written first)
//! ```
//! A save exists once its entry exists; a bundle without an entry is what an
//! interrupted save left, and is never listed or restored. Entries come from
//! the store, which another machine writes: every field is checked before it
//! is used in a key, a git command or a path.

use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::git::is_object_id;

/// The largest index entry read from a store.
pub const MAX_ENTRY_BYTES: u64 = 64 * 1024;
/// The longest message kept.
pub const MAX_MESSAGE: usize = 2000;

/// The state of the project's own git repository at a save.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// The commit HEAD named (none on a branch without commits).
    pub head: Option<String>,
    /// The branch HEAD was on (`main`), none when detached.
    pub branch: Option<String>,
    /// A commit whose tree is the staging area (the index), when it could be read.
    pub index: Option<String>,
}

/// One save, as the store's index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveEntry {
    /// The format of this entry.
    pub version: u32,
    /// The save's id: 12 lowercase hex digits.
    pub id: String,
    /// The line of saves it belongs to (the project's, across restores).
    pub workspace: Uuid,
    /// The session of the project it was saved from.
    pub session: Option<Uuid>,
    /// When it was saved.
    pub time: Timestamp,
    /// What the person said about it.
    pub message: String,
    /// The project directory it was saved from.
    pub directory: PathBuf,
    /// The machine it was saved on.
    pub host: String,
    /// The save commit (its tree is the project's files).
    pub commit: String,
    /// How many files it holds.
    pub files: u64,
    /// The bundle's size in bytes.
    pub bundle_size: u64,
    /// The bundle's SHA-256 (hex).
    pub bundle_sha256: String,
    /// The save whose bundle this one's builds on (incremental), if any.
    pub base: Option<String>,
    /// How many bundles a restore reads: 1 for a full bundle.
    pub depth: u32,
    /// The project's git repository, when it had one.
    pub git: Option<GitState>,
}

/// An entry that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the index entry {key} is not valid: {why}")]
pub struct BadEntry {
    /// Its key.
    pub key: String,
    /// What is wrong with it.
    pub why: String,
}

impl SaveEntry {
    /// The entry's key.
    pub fn key(&self) -> String {
        entry_key(&self.workspace, self.time, &self.id)
    }

    /// The key of its bundle.
    pub fn bundle_key(&self) -> String {
        bundle_key(&self.id)
    }

    /// Reads and checks an entry downloaded from `key`.
    pub fn from_store(key: &str, bytes: &[u8]) -> Result<SaveEntry, BadEntry> {
        let bad = |why: String| BadEntry {
            key: key.to_string(),
            why,
        };
        let e: SaveEntry = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if e.version != 1 {
            return Err(bad(format!(
                "format {} is newer than this vibebox reads (1); update vibebox",
                e.version
            )));
        }
        if !is_save_id(&e.id) || e.base.as_deref().is_some_and(|b| !is_save_id(b)) {
            return Err(bad("an id is not 12 lowercase hex digits".into()));
        }
        if !is_object_id(&e.commit) {
            return Err(bad("the commit is not a full object name".into()));
        }
        if let Some(g) = &e.git {
            let ids = [g.head.as_deref(), g.index.as_deref()];
            if ids.into_iter().flatten().any(|s| !is_object_id(s)) {
                return Err(bad("a git commit is not a full object name".into()));
            }
            if g.branch.as_deref().is_some_and(|b| !is_branch_name(b)) {
                return Err(bad("the branch name is not one git allows".into()));
            }
        }
        if e.bundle_sha256.len() != 64 || !e.bundle_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the bundle checksum is not a SHA-256".into()));
        }
        if e.depth == 0 || (e.depth == 1) != e.base.is_none() {
            return Err(bad("its depth and base disagree".into()));
        }
        if parse_entry_key(key).is_none_or(|(w, id)| w != e.workspace || id != e.id) {
            return Err(bad("its key does not name its workspace and id".into()));
        }
        Ok(e)
    }
}

/// True for a save id: 12 lowercase hex digits.
pub fn is_save_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new save id.
pub fn new_save_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The key of an entry.
pub fn entry_key(workspace: &Uuid, time: Timestamp, id: &str) -> String {
    format!(
        "saves/{workspace}/{}-{id}.json",
        time.strftime("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// The key of a bundle.
pub fn bundle_key(id: &str) -> String {
    format!("bundles/{id}.bundle")
}

/// The workspace and id an entry key names.
pub fn parse_entry_key(key: &str) -> Option<(Uuid, String)> {
    let rest = key.strip_prefix("saves/")?;
    let (ws, file) = rest.split_once('/')?;
    let stem = file.strip_suffix(".json")?;
    let (_, id) = stem.rsplit_once('-')?;
    if !is_save_id(id) {
        return None;
    }
    Some((ws.parse().ok()?, id.to_string()))
}

/// A conservative check of a branch name (a subset of what
/// `git check-ref-format --branch` allows): printable ASCII, no `..`, no
/// component starting with `.` or ending with `.lock`, none of `~^:?*[\`.
pub fn is_branch_name(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 255
        && !b.starts_with('-')
        && !b.contains("..")
        && !b.contains("@{")
        && !b.ends_with('/')
        && !b.ends_with('.')
        && b.bytes()
            .all(|c| c.is_ascii_graphic() && !b"~^:?*[\\".contains(&c))
        && b.split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SaveEntry {
        SaveEntry {
            version: 1,
            id: "0123456789ab".into(),
            workspace: Uuid::nil(),
            session: None,
            time: "2026-11-24T10:00:00Z".parse().unwrap(),
            message: "m".into(),
            directory: "/p".into(),
            host: "h".into(),
            commit: "a".repeat(40),
            files: 1,
            bundle_size: 10,
            bundle_sha256: "0".repeat(64),
            base: None,
            depth: 1,
            git: Some(GitState {
                head: Some("b".repeat(40)),
                branch: Some("feature/x".into()),
                index: None,
            }),
        }
    }

    #[test]
    fn entries_round_trip_under_their_key() {
        let e = entry();
        let key = e.key();
        assert_eq!(
            key,
            "saves/00000000-0000-0000-0000-000000000000/20261124T100000.000Z-0123456789ab.json"
        );
        let back = SaveEntry::from_store(&key, &serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(parse_entry_key(&key), Some((Uuid::nil(), e.id.clone())));
    }

    #[test]
    fn hostile_entries_are_refused() {
        let check = |f: &dyn Fn(&mut SaveEntry)| {
            let mut e = entry();
            let key = e.key();
            f(&mut e);
            SaveEntry::from_store(&key, &serde_json::to_vec(&e).unwrap()).is_err()
        };
        assert!(check(&|e| e.id = "../../etc/xx".into()));
        assert!(check(&|e| e.base = Some("zz".into())));
        assert!(check(&|e| e.commit = "HEAD".into()));
        assert!(check(&|e| e.commit = "--upload-pack=x".into()));
        assert!(check(
            &|e| e.git.as_mut().unwrap().branch = Some("-f".into())
        ));
        assert!(check(
            &|e| e.git.as_mut().unwrap().branch = Some("a/../b".into())
        ));
        assert!(check(&|e| e.git.as_mut().unwrap().head = Some("x".into())));
        assert!(check(&|e| e.version = 2));
        assert!(check(&|e| e.depth = 2));
        assert!(check(&|e| e.workspace = Uuid::max()));
        assert!(SaveEntry::from_store(&entry().key(), b"{").is_err());
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "feature/x", "v1.2", "a-b_c"] {
            assert!(is_branch_name(ok), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a/.b", "a.lock", "a b", "a~1", "x/", "@{u}", "a\n",
        ] {
            assert!(!is_branch_name(bad), "{bad}");
        }
    }
}
