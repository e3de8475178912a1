//! The project side of saves: vibebox's own repository in `.vibebox/save.git`
//! and the project's state captured into it.
//!
//! Saves are commits in a repository of vibebox's own, kept in the project's
//! `.vibebox/` (hidden from the box), whose work tree is the project. It
//! borrows the objects of the project's git repository, when there is one
//! (an `alternates` entry), so that a save's commits can have the project's
//! HEAD and staging area as parents and its bundle carries their history.
//! The person's repository is only read: its HEAD, branch, index, refs and
//! stash are never written (its index is read from a copy).
//!
//! Capturing uses a temporary index and `git add -A`, so `.gitignore`,
//! `.git/info/exclude` and the person's global excludes decide what is
//! saved, and `info/attributes` of vibebox's repository turns off every
//! conversion (line endings, filters, encodings): a save holds the bytes of
//! the files as they are.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::git::{is_object_id, Git, GitError};

/// The largest git index of the project that is read.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;
/// The largest `.git/info/exclude` that is honoured.
pub const MAX_EXCLUDE_BYTES: u64 = 1 << 20;

/// Attributes that keep every file's bytes as they are.
const RAW_ATTRIBUTES: &str = "* -text -filter -ident -working-tree-encoding -eol -diff\n";

/// What went wrong on the project side.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something in the project cannot be used as it is.
    #[error("{0}")]
    Refused(String),
}

/// Names a failed file operation (shared by saves and restores).
pub(crate) fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WorkspaceError + 'a {
    move |source| WorkspaceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The project's own git repository, as found (only read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRepo {
    /// Its git directory (`.git`, or a worktree's).
    pub git_dir: PathBuf,
    /// Its common directory (where objects live).
    pub common_dir: PathBuf,
    /// The commit HEAD names, if the branch has one.
    pub head: Option<String>,
    /// The branch HEAD is on, if not detached.
    pub branch: Option<String>,
}

/// The project's state, captured.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The tree of the project's files.
    pub tree: String,
    /// The tree of the project's staging area, when it could be read.
    pub index_tree: Option<String>,
    /// Every saved path.
    pub paths: Vec<String>,
    /// Nested repositories, saved as a pointer only (their files are not saved).
    pub nested_repos: Vec<String>,
    /// What git could not read (one line each, escaped).
    pub unreadable: Vec<String>,
    /// The index file that holds `tree` (`.vibebox/save.index`).
    pub index: PathBuf,
}

/// vibebox's repository of saves in a project.
#[derive(Debug, Clone)]
pub struct Workspace {
    project: PathBuf,
    state: PathBuf,
    repo: PathBuf,
}

impl Workspace {
    /// The workspace of the project `project` whose `.vibebox/` is `state`
    /// (which exists and was checked); its repository is made when missing.
    pub fn open(project: &Path, state: &Path) -> Result<Workspace, WorkspaceError> {
        let w = Workspace {
            project: project.to_path_buf(),
            state: state.to_path_buf(),
            repo: state.join("save.git"),
        };
        let meta = fs::symlink_metadata(&w.repo);
        match meta {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(WorkspaceError::Refused(format!(
                    "{} is not a directory; remove it",
                    w.repo.display()
                )))
            }
            Err(_) => w.init()?,
        }
        // Rewritten every time: what decides what is saved is ours.
        let info = w.repo.join("info");
        fs::create_dir_all(&info).map_err(io("create", &info))?;
        let attrs = info.join("attributes");
        fs::write(&attrs, RAW_ATTRIBUTES).map_err(io("write", &attrs))?;
        Ok(w)
    }

    fn init(&self) -> Result<(), WorkspaceError> {
        let tmp = self.state.join("save.git.new");
        let _ = fs::remove_dir_all(&tmp);
        Git::new(&self.state).run(&[
            "init".as_ref(),
            "-q".as_ref(),
            "--bare".as_ref(),
            tmp.as_os_str(),
        ])?;
        let git = Git::new(&tmp).env("GIT_DIR", &tmp);
        for (k, v) in [
            ("core.bare", "false"),
            ("core.autocrlf", "false"),
            ("core.symlinks", "true"),
            ("core.fileMode", "true"),
            ("gc.auto", "0"),
        ] {
            git.run(&["config", k, v])?;
        }
        let hooks = tmp.join("hooks");
        let _ = fs::remove_dir_all(&hooks);
        fs::rename(&tmp, &self.repo).map_err(io("create", &self.repo))?;
        Ok(())
    }

    /// The repository's path (`.vibebox/save.git`).
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// The project directory.
    pub fn project(&self) -> &Path {
        &self.project
    }

    /// git on vibebox's repository, with the project as work tree.
    pub fn git(&self) -> Git {
        Git::new(&self.project)
            .env("GIT_DIR", &self.repo)
            .env("GIT_WORK_TREE", &self.project)
    }

    /// git on vibebox's repository with `index` as its index.
    pub fn git_with_index(&self, index: &Path) -> Git {
        self.git().env("GIT_INDEX_FILE", index)
    }

    /// A setting of the workspace (`vibebox.<key>` in its repository's config).
    pub fn setting(&self, key: &str) -> Option<String> {
        self.git()
            .run(&["config", "--get", &format!("vibebox.{key}")])
            .ok()
            .map(|o| o.text())
            .filter(|s| !s.is_empty())
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), WorkspaceError> {
        self.git()
            .run(&["config", &format!("vibebox.{key}"), value])?;
        Ok(())
    }

    /// The line of saves this project belongs to.
    pub fn id(&self) -> Option<Uuid> {
        self.setting("workspace").and_then(|s| s.parse().ok())
    }

    /// The save this project last made or was restored from: (id, commit, depth).
    pub fn last_save(&self) -> Option<(String, String, u32)> {
        let id = self.setting("lastSave")?;
        let commit = self.setting("lastCommit").filter(|c| is_object_id(c))?;
        let depth = self.setting("lastDepth")?.parse().ok()?;
        crate::entry::is_save_id(&id).then_some((id, commit, depth))
    }

    /// Records the save this project is now at.
    pub fn set_last_save(&self, id: &str, commit: &str, depth: u32) -> Result<(), WorkspaceError> {
        self.set_setting("lastSave", id)?;
        self.set_setting("lastCommit", commit)?;
        self.set_setting("lastDepth", &depth.to_string())
    }

    /// Whether the repository has `object`.
    pub fn has(&self, object: &str) -> bool {
        self.git()
            .ok(&["cat-file", "-e", &format!("{object}^{{commit}}")])
            .unwrap_or(false)
    }

    /// The project's own git repository, if it is one (its top level is the
    /// project itself: a parent directory's repository does not count).
    pub fn user_repo(&self) -> Result<Option<UserRepo>, WorkspaceError> {
        let dotgit = self.project.join(".git");
        match fs::symlink_metadata(&dotgit) {
            Err(_) => return Ok(None),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(WorkspaceError::Refused(format!(
                    "{} is a symbolic link: vibebox does not follow it (it could lead anywhere on this machine)",
                    dotgit.display()
                )))
            }
            Ok(_) => {}
        }
        let ceiling = self.project.parent().unwrap_or(Path::new("/"));
        let git = Git::new(&self.project).env("GIT_CEILING_DIRECTORIES", ceiling);
        let out = git.run(&[
            "rev-parse",
            "--path-format=absolute",
            "--show-toplevel",
            "--absolute-git-dir",
            "--git-common-dir",
        ])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        let [top, git_dir, common] = lines[..] else {
            return Err(WorkspaceError::Refused(format!(
                "git did not describe the repository in {}",
                self.project.display()
            )));
        };
        let same = |a: &Path, b: &Path| {
            fs::canonicalize(a)
                .ok()
                .is_some_and(|a| Some(a) == fs::canonicalize(b).ok())
        };
        if !same(Path::new(top), &self.project) {
            return Ok(None);
        }
        let branch = git
            .run(&["symbolic-ref", "-q", "HEAD"])
            .ok()
            .map(|o| o.text())
            .and_then(|r| r.strip_prefix("refs/heads/").map(str::to_string))
            .filter(|b| crate::entry::is_branch_name(b));
        let head = git
            .run(&["rev-parse", "-q", "--verify", "HEAD^{commit}"])
            .ok()
            .map(|o| o.text())
            .filter(|h| is_object_id(h));
        Ok(Some(UserRepo {
            git_dir: PathBuf::from(git_dir),
            common_dir: PathBuf::from(common),
            head,
            branch,
        }))
    }

    /// Points vibebox's repository at the objects of `user` (or at none), and
    /// takes its `info/exclude`.
    fn borrow(&self, user: Option<&UserRepo>) -> Result<(), WorkspaceError> {
        let alternates = self.repo.join("objects/info/alternates");
        let mut exclude = String::from("# written by vibebox at each save\n/.vibebox/\n");
        match user {
            Some(u) => {
                let objects = u.common_dir.join("objects");
                let line = format!("{}\n", objects.display());
                fs::write(&alternates, line).map_err(io("write", &alternates))?;
                if let Some(text) =
                    read_capped(&u.common_dir.join("info/exclude"), MAX_EXCLUDE_BYTES)
                {
                    exclude.push_str(&String::from_utf8_lossy(&text));
                    exclude.push('\n');
                }
            }
            None => {
                let _ = fs::remove_file(&alternates);
            }
        }
        let path = self.repo.join("info/exclude");
        fs::write(&path, exclude).map_err(io("write", &path))?;
        Ok(())
    }

    /// Captures the project's files (and, with `user`, its staging area)
    /// into objects of vibebox's repository.
    ///
    /// The files go through vibebox's own index (`.vibebox/save.index`), never
    /// the person's: an entry git cached after converting a file (line
    /// endings, filters) would otherwise stand for bytes the file does not
    /// have. The person's index is read from a copy, for its tree only.
    pub fn capture(&self, user: Option<&UserRepo>) -> Result<Captured, WorkspaceError> {
        self.borrow(user)?;
        let index = self.state.join("save.index");
        let tmp = self.state.join("save.index.tmp");
        let _ = fs::remove_file(&tmp);
        let mut index_tree = None;
        if let Some(u) = user {
            let copy = self.state.join("save.their-index.tmp");
            let _ = fs::remove_file(&copy);
            // A missing index (a new repository) is an empty staging area.
            if let Some(bytes) = read_capped(&u.git_dir.join("index"), MAX_INDEX_BYTES) {
                fs::write(&copy, bytes).map_err(io("write", &copy))?;
            }
            index_tree = self
                .git_with_index(&copy)
                .run(&["write-tree"])
                .ok()
                .map(|o| o.text())
                .filter(|t| is_object_id(t));
            let _ = fs::remove_file(&copy);
        }
        if fs::symlink_metadata(&index).is_ok_and(|m| m.is_file()) {
            fs::copy(&index, &tmp).map_err(io("copy", &index))?;
        }
        let git = self.git_with_index(&tmp);
        let added = git.run(&["add", "-A", "--ignore-errors", "--", "."]);
        let stderr = match added {
            Ok(o) => o.stderr,
            // --ignore-errors: it went on past what it could not read, and says so.
            Err(GitError::Failed { stderr, .. }) => stderr,
            Err(e) => return Err(e.into()),
        };
        let unreadable: Vec<String> = stderr
            .lines()
            .filter(|l| l.starts_with("error:") || l.starts_with("fatal:"))
            .map(vibebox_core::text::for_terminal)
            .collect();
        let tree = git.run(&["write-tree"])?.text();
        let listing = git.run(&["ls-files", "-z", "-s"])?;
        let mut paths = Vec::new();
        let mut nested_repos = Vec::new();
        for rec in listing.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let rec = String::from_utf8_lossy(rec);
            let Some((meta, path)) = rec.split_once('\t') else {
                continue;
            };
            if meta.starts_with("160000") {
                nested_repos.push(path.to_string());
            }
            paths.push(path.to_string());
        }
        fs::rename(&tmp, &index).map_err(io("keep", &index))?;
        Ok(Captured {
            tree,
            index_tree,
            paths,
            nested_repos,
            unreadable,
            index,
        })
    }

    /// Records that save `id` (commit `commit`) is in the store.
    pub fn mark_stored(&self, id: &str, commit: &str) -> Result<(), WorkspaceError> {
        self.git()
            .run(&["update-ref", &format!("refs/vibebox/stored/{id}"), commit])?;
        Ok(())
    }

    /// The trees of every save this repository knows the store has, for "is
    /// this state saved?".
    pub fn saved_trees(&self) -> Result<Vec<String>, WorkspaceError> {
        let out = self
            .git()
            .run(&["for-each-ref", "--format=%(tree)", "refs/vibebox/stored/"])?;
        Ok(out.text().lines().map(str::to_string).collect())
    }

    /// Forgets what an interrupted save or restore left: save refs the store
    /// never got, and temporary files. Call with the save lock held.
    pub fn clean_interrupted(&self) -> Result<(), WorkspaceError> {
        let refs = |prefix: &str| -> Result<Vec<String>, WorkspaceError> {
            let out = self
                .git()
                .run(&["for-each-ref", "--format=%(refname)", prefix])?;
            Ok(out.text().lines().map(str::to_string).collect())
        };
        let stored: Vec<String> = refs("refs/vibebox/stored/")?
            .iter()
            .filter_map(|r| r.rsplit('/').next().map(str::to_string))
            .collect();
        for r in refs("refs/vibebox/save/")? {
            let id = r.rsplit('/').next().unwrap_or_default();
            if !stored.iter().any(|s| s == id) {
                let _ = self.git().run(&["update-ref", "-d", &r]);
            }
        }
        for r in refs("refs/vibebox/restore/")? {
            let _ = self.git().run(&["update-ref", "-d", &r]);
        }
        if let Ok(rd) = fs::read_dir(&self.state) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let temp = (name.starts_with("save-") || name.starts_with("restore-"))
                    && name.ends_with(".bundle")
                    || name.starts_with("save.") && name.ends_with(".tmp");
                if temp {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }
}

/// Reads a regular file (never through a symlink), if it exists and is at
/// most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> Option<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        return None;
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    file.take(max).read_to_end(&mut out).ok()?;
    Some(out)
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Paths that look like secrets: `.env` files, keys and certificates.
///
/// ```
/// use vibebox_store::workspace::looks_secret;
/// assert!(looks_secret("config/.env"));
/// assert!(looks_secret("certs/server.pem"));
/// assert!(looks_secret("home/id_ed25519"));
/// assert!(!looks_secret("home/id_ed25519.pub"));
/// assert!(!looks_secret(".env.example"));
/// assert!(!looks_secret("src/identity.rs"));
/// ```
pub fn looks_secret(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let env = name == ".env"
        || (name.starts_with(".env.")
            && ![".env.example", ".env.sample", ".env.template", ".env.dist"].contains(&name));
    let key = [".pem", ".key", ".p12", ".pfx"]
        .iter()
        .any(|s| name.ends_with(s));
    let ssh = name.starts_with("id_") && !name.ends_with(".pub") && !name.contains('.');
    env || key || ssh
}
