//! Protected paths: what the box may read but never write in a read-write
//! share, because the host runs or trusts it without asking.
//!
//! In every read-write share:
//! - the hooks and config of every git repository (`.git/hooks/`,
//!   `.git/config`, `.git/config.worktree`, `.git/commondir`, worktree configs
//!   and common dir pointers, every module gitdir's `hooks/`, `config` and
//!   `commondir`, and `.git/modules/` itself so that no new module gitdir
//!   appears), a `.git` file (gitdir pointer) itself, and the `.git`
//!   directory pinned so it cannot be renamed or replaced;
//! - the project's `vibebox.toml`;
//! - the agents' settings in `~/.claude` (`settings.json`,
//!   `settings.local.json`, `hooks/`, `commands/`, `agents/`, `plugins/`) and
//!   `~/.codex` (`config.toml`);
//! - the paths of `[box] protect`;
//! - and every nested project's `.vibebox/`, and vibebox's own state, hidden.
//!
//! This module only decides; the share's server (virtiofsd) enforces it on
//! the host, with bind mounts in its private mount namespace (see
//! `vibebox-vm`). A protected path that is a symlink cannot be protected by a
//! bind mount (the box could replace the link itself), so it is refused.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mounts::MountMode;

/// How many directories the search for git repositories and nested projects
/// looks at in one share before it stops (and says so).
pub const MAX_WALK_DIRS: usize = 200_000;

/// What happens to one path of a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardKind {
    /// Covered by an empty directory: the box sees nothing there.
    Hide,
    /// Bound onto itself, writable: it cannot be renamed or removed.
    Pin,
    /// Bound onto itself, writable even under a read-only parent.
    Writable,
    /// Bound onto itself, read-only.
    ReadOnly,
}

impl GuardKind {
    /// The word the share's launcher understands.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardKind::Hide => "hide",
            GuardKind::Pin => "pin",
            GuardKind::Writable => "rw",
            GuardKind::ReadOnly => "ro",
        }
    }
}

/// One protected path of a share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// The absolute host path (no symlink in it).
    pub path: PathBuf,
    /// What happens to it.
    pub kind: GuardKind,
    /// Why, for `explain`.
    pub why: String,
}

/// Everything protected in one share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareGuards {
    /// In the order they must be applied (parents first).
    pub guards: Vec<Guard>,
    /// Placeholders created so that they could be protected (a missing
    /// `.git/hooks/` or `~/.claude/settings.json` would otherwise be created by
    /// the box).
    pub created: Vec<PathBuf>,
    /// Things the person should know (a protected path that does not exist,
    /// a search that stopped at its limit).
    pub warnings: Vec<String>,
}

/// A path that must be protected but cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtectError {
    /// A protected path is a symlink.
    #[error("{} is a symlink (to {}): vibebox cannot protect a symlink in a read-write share, because the box could replace it", path.display(), target.display())]
    Symlink {
        /// The path.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A placeholder could not be created.
    #[error("cannot create {} to protect it: {why}", path.display())]
    Create {
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

impl ProtectError {
    /// What to do about it.
    pub fn help(&self) -> String {
        match self {
            ProtectError::Symlink { .. } => "replace the symlink with the file or directory it points to, or mount its directory read-only".to_string(),
            ProtectError::Create { .. } => "check the permissions of that directory".to_string(),
        }
    }
}

/// What the planner needs to know besides the share.
#[derive(Debug, Clone)]
pub struct ProtectContext<'a> {
    /// The project directory (real path).
    pub project_dir: &'a Path,
    /// The host user's home (for `~/.claude`, `~/.codex`).
    pub host_home: &'a Path,
    /// Directories hidden from every share (the project's `.vibebox/`,
    /// `VIBEBOX_HOME`).
    pub hidden: &'a [PathBuf],
    /// `[box] protect`, resolved.
    pub extra: &'a [PathBuf],
    /// Create missing placeholders (a start), or only report them (`explain`).
    pub create: bool,
}

/// The files and directories of an agent's config that the host runs.
struct AgentDir {
    dir: &'static str,
    files: &'static [(&'static str, &'static str)],
    dirs: &'static [&'static str],
}

/// Agents' settings: name and placeholder content of files, directories.
const AGENT_DIRS: &[AgentDir] = &[
    AgentDir {
        dir: ".claude",
        files: &[("settings.json", "{}\n"), ("settings.local.json", "{}\n")],
        dirs: &["hooks", "commands", "agents", "plugins"],
    },
    AgentDir {
        dir: ".codex",
        files: &[("config.toml", "")],
        dirs: &[],
    },
];

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

struct Planner<'a, 'c> {
    ctx: &'a ProtectContext<'c>,
    share: PathBuf,
    out: ShareGuards,
}

impl Planner<'_, '_> {
    fn add(&mut self, path: PathBuf, kind: GuardKind, why: impl Into<String>) {
        if !self.out.guards.iter().any(|g| g.path == path) {
            self.out.guards.push(Guard {
                path,
                kind,
                why: why.into(),
            });
        }
    }

    /// Protects `path`, which must exist as a real file or directory; a
    /// missing one is created (`dir` or a file with `content`) when `create`.
    fn protect(
        &mut self,
        path: PathBuf,
        kind: GuardKind,
        why: &str,
        placeholder: Option<Placeholder>,
    ) -> Result<(), ProtectError> {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ProtectError::Symlink {
                    target: std::fs::read_link(&path).unwrap_or_default(),
                    path,
                })
            }
            Ok(_) => {}
            Err(_) => {
                let Some(ph) = placeholder else {
                    return Ok(());
                };
                if self.ctx.create {
                    let made = match ph {
                        Placeholder::Dir => std::fs::create_dir(&path),
                        Placeholder::File(text) => std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)
                            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes())),
                    };
                    match made {
                        Ok(()) => {}
                        // Another vibebox made it at the same moment: look again.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                            return self.protect(path, kind, why, None);
                        }
                        Err(e) => {
                            return Err(ProtectError::Create {
                                path: path.clone(),
                                why: e.to_string(),
                            })
                        }
                    }
                }
                self.out.created.push(path.clone());
            }
        }
        self.add(path, kind, why);
        Ok(())
    }

    /// The hooks directory a `core.hooksPath` names (husky, lefthook…):
    /// the host's git runs what is in it, so it is protected when it lies in
    /// the share (made when missing, since the setting is already there).
    fn hooks_path(&mut self, share: &Path, dir: PathBuf) -> Result<(), ProtectError> {
        if dir.starts_with(share) && dir != share {
            self.protect(
                dir,
                GuardKind::ReadOnly,
                "git hooks (core.hooksPath)",
                Some(Placeholder::Dir),
            )?;
        }
        Ok(())
    }

    /// A git directory (the `.git` of a repository, or a module's gitdir).
    fn git_dir(&mut self, g: &Path, pin: GuardKind) -> Result<(), ProtectError> {
        self.add(g.to_path_buf(), pin, "git directory (cannot be replaced)");
        if pin == GuardKind::Pin {
            // A repository's own `.git`: its worktree is the directory above.
            let text = std::fs::read_to_string(g.join("config")).unwrap_or_default();
            if let (Some(value), Some(worktree)) = (hooks_path_in(&text), g.parent()) {
                let dir = hooks_dir(&value, self.ctx.host_home, worktree);
                self.hooks_path(&self.share.clone(), dir)?;
            }
        }
        self.protect(g.join("config"), GuardKind::ReadOnly, "git config", None)?;
        self.protect(
            g.join("hooks"),
            GuardKind::ReadOnly,
            "git hooks",
            Some(Placeholder::Dir),
        )?;
        self.protect(
            g.join("config.worktree"),
            GuardKind::ReadOnly,
            "git config",
            None,
        )?;
        // `commondir` names the directory git takes config and hooks from: a
        // box that writes one redirects the host's next `git` to a config it
        // wrote. A placeholder naming the gitdir itself (".") changes nothing
        // for git and cannot be rewritten.
        self.protect(
            g.join("commondir"),
            GuardKind::ReadOnly,
            "git common dir pointer",
            Some(Placeholder::File(".\n")),
        )?;
        if let Ok(rd) = std::fs::read_dir(g.join("worktrees")) {
            for e in rd.flatten() {
                for (name, why) in [
                    ("config.worktree", "git worktree config"),
                    ("commondir", "git common dir pointer"),
                ] {
                    self.protect(e.path().join(name), GuardKind::ReadOnly, why, None)?;
                }
            }
        }
        let modules = g.join("modules");
        self.protect(
            modules.clone(),
            GuardKind::ReadOnly,
            "git modules (no new module gitdir)",
            Some(Placeholder::Dir),
        )?;
        // Existing module gitdirs stay writable (objects, index, refs), but
        // not their hooks and config. Module names may contain `/`.
        let mut stack = vec![modules];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                seen += 1;
                if seen > 10_000 || is_symlink(&p) || !p.is_dir() {
                    continue;
                }
                if p.join("HEAD").is_file() {
                    self.git_dir(&p, GuardKind::Writable)?;
                } else {
                    stack.push(p);
                }
            }
        }
        Ok(())
    }
}

/// The `core.hooksPath` a git config file sets, if any (the last one wins,
/// as in git). A plain reading: `[core]` sections, `hooksPath = value` with
/// optional quotes; includes are not followed.
pub fn hooks_path_in(config_text: &str) -> Option<String> {
    let mut in_core = false;
    let mut found = None;
    for line in config_text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let name = line
                .trim_start_matches('[')
                .split([']', ' ', '"'])
                .next()
                .unwrap_or("");
            in_core = name.eq_ignore_ascii_case("core") && !line.contains('"');
            continue;
        }
        if !in_core {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim().eq_ignore_ascii_case("hookspath") {
            let v = value.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            found = Some(v.to_string());
        }
    }
    found
}

/// Where a `core.hooksPath` value points: `~/` is the host home, a relative
/// path is relative to `worktree`.
fn hooks_dir(value: &str, host_home: &Path, worktree: &Path) -> PathBuf {
    let joined = match value.strip_prefix("~/") {
        Some(rest) => host_home.join(rest),
        None => worktree.join(value),
    };
    crate::mounts::normalize(&joined)
}

#[derive(Clone, Copy)]
enum Placeholder {
    Dir,
    File(&'static str),
}

/// Plans the protections of the share of host directory `share` (a real path).
///
/// Read-only shares need only the hidden directories; a read-write share
/// gets every protection listed in the module documentation.
pub fn plan_share(
    share: &Path,
    mode: MountMode,
    ctx: &ProtectContext<'_>,
) -> Result<ShareGuards, ProtectError> {
    let mut p = Planner {
        ctx,
        share: share.to_path_buf(),
        out: ShareGuards::default(),
    };
    for h in ctx.hidden {
        if h.starts_with(share) && h != share && h.is_dir() && !is_symlink(h) {
            p.add(h.clone(), GuardKind::Hide, "vibebox state");
        }
    }
    if mode == MountMode::ReadWrite {
        let config = ctx.project_dir.join(crate::config::CONFIG_FILE);
        if config.starts_with(share) {
            p.protect(
                config,
                GuardKind::ReadOnly,
                "the project's vibebox.toml",
                None,
            )?;
        }
        walk(share, &mut p)?;
        // A global `core.hooksPath` applies to every repository on the host.
        for global in [".gitconfig", ".config/git/config"] {
            let text = std::fs::read_to_string(ctx.host_home.join(global)).unwrap_or_default();
            // (A relative one is relative to each repository: found above.)
            if let Some(value) = hooks_path_in(&text).filter(|v| v.starts_with(['/', '~'])) {
                let dir = hooks_dir(&value, ctx.host_home, ctx.host_home);
                p.hooks_path(share, dir)?;
            }
        }
        for agent in AGENT_DIRS {
            let dir = ctx.host_home.join(agent.dir);
            let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
            if !dir.starts_with(share) || !dir.is_dir() {
                continue;
            }
            for (name, text) in agent.files {
                p.protect(
                    dir.join(name),
                    GuardKind::ReadOnly,
                    "agent settings",
                    Some(Placeholder::File(text)),
                )?;
            }
            for name in agent.dirs {
                p.protect(
                    dir.join(name),
                    GuardKind::ReadOnly,
                    "agent settings",
                    Some(Placeholder::Dir),
                )?;
            }
        }
        for extra in ctx.extra {
            if !extra.starts_with(share) {
                continue;
            }
            if std::fs::symlink_metadata(extra).is_err() {
                p.out.warnings.push(format!(
                    "box.protect: {} does not exist, so nothing protects it (the box could create it)",
                    extra.display()
                ));
                continue;
            }
            p.protect(extra.clone(), GuardKind::ReadOnly, "box.protect", None)?;
        }
    }
    let mut out = p.out;
    // Parents before children: a read-only `.git/modules` before the writable
    // module gitdirs under it, before their read-only config.
    out.guards.sort_by_key(|g| g.path.components().count());
    Ok(out)
}

/// Finds git repositories and nested projects' `.vibebox/` in `share`,
/// without following symlinks.
fn walk(share: &Path, p: &mut Planner<'_, '_>) -> Result<(), ProtectError> {
    let mut queue = VecDeque::from([share.to_path_buf()]);
    let mut dirs = 0usize;
    while let Some(dir) = queue.pop_front() {
        dirs += 1;
        if dirs > MAX_WALK_DIRS {
            p.out.warnings.push(format!(
                "stopped looking for git repositories in {} after {MAX_WALK_DIRS} directories: repositories deeper in it are not protected",
                share.display()
            ));
            return Ok(());
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else {
                continue;
            };
            let path = e.path();
            let name = e.file_name();
            if name == ".git" {
                if ft.is_symlink() {
                    return Err(ProtectError::Symlink {
                        target: std::fs::read_link(&path).unwrap_or_default(),
                        path,
                    });
                } else if ft.is_dir() {
                    p.git_dir(&path, GuardKind::Pin)?;
                } else {
                    p.add(path, GuardKind::ReadOnly, "git directory pointer");
                }
                continue;
            }
            if !ft.is_dir() {
                continue;
            }
            if name == crate::project::STATE_DIR {
                if path != p.ctx.project_dir.join(crate::project::STATE_DIR) {
                    p.add(path, GuardKind::Hide, "a nested project's vibebox state");
                }
                continue;
            }
            if p.ctx.hidden.contains(&path) {
                continue;
            }
            queue.push_back(path);
        }
    }
    Ok(())
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            GuardKind::Hide => "hidden",
            GuardKind::Pin | GuardKind::Writable => "pinned",
            GuardKind::ReadOnly => "read-only",
        };
        write!(f, "{} ({what}: {})", self.path.display(), self.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        home: PathBuf,
        proj: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let home = root.join("home");
        let proj = home.join("proj");
        std::fs::create_dir_all(proj.join(".git/hooks")).unwrap();
        std::fs::write(proj.join(".git/config"), "[core]\n").unwrap();
        std::fs::write(proj.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(proj.join("vibebox.toml"), "").unwrap();
        std::fs::create_dir_all(proj.join(".vibebox/ssh")).unwrap();
        Fixture {
            _dir: dir,
            root,
            home,
            proj,
        }
    }

    fn plan(
        f: &Fixture,
        share: &Path,
        create: bool,
        extra: &[PathBuf],
    ) -> Result<ShareGuards, ProtectError> {
        let hidden = vec![f.proj.join(".vibebox"), f.root.join("vbhome")];
        plan_share(
            share,
            MountMode::ReadWrite,
            &ProtectContext {
                project_dir: &f.proj,
                host_home: &f.home,
                hidden: &hidden,
                extra,
                create,
            },
        )
    }

    fn kinds(g: &ShareGuards, base: &Path) -> Vec<(String, GuardKind)> {
        g.guards
            .iter()
            .map(|g| {
                (
                    g.path.strip_prefix(base).unwrap().display().to_string(),
                    g.kind,
                )
            })
            .collect()
    }

    #[test]
    fn a_project_share_protects_git_config_and_vibebox_state() {
        let f = fixture();
        let g = plan(&f, &f.proj, true, &[]).unwrap();
        let k = kinds(&g, &f.proj);
        for want in [
            (".vibebox", GuardKind::Hide),
            ("vibebox.toml", GuardKind::ReadOnly),
            (".git", GuardKind::Pin),
            (".git/config", GuardKind::ReadOnly),
            (".git/hooks", GuardKind::ReadOnly),
            (".git/modules", GuardKind::ReadOnly),
            (".git/commondir", GuardKind::ReadOnly),
        ] {
            assert!(
                k.contains(&(want.0.to_string(), want.1)),
                "{want:?} in {k:?}"
            );
        }
        // `.git/modules` and `.git/commondir` did not exist: they were made so
        // that they could be protected.
        assert_eq!(
            g.created,
            vec![f.proj.join(".git/commondir"), f.proj.join(".git/modules")]
        );
        assert_eq!(
            std::fs::read_to_string(f.proj.join(".git/commondir")).unwrap(),
            ".\n"
        );
        assert!(f.proj.join(".git/modules").is_dir());
        // Parents come first.
        let depth: Vec<usize> = g
            .guards
            .iter()
            .map(|g| g.path.components().count())
            .collect();
        assert!(depth.windows(2).all(|w| w[0] <= w[1]), "{depth:?}");
    }

    #[test]
    fn nested_repositories_modules_and_projects_are_found() {
        let f = fixture();
        let m = f.proj.join(".git/modules/lib/deep");
        std::fs::create_dir_all(m.join("hooks")).unwrap();
        std::fs::write(m.join("HEAD"), "x").unwrap();
        std::fs::write(m.join("config"), "x").unwrap();
        std::fs::create_dir_all(f.proj.join("lib/deep")).unwrap();
        std::fs::write(
            f.proj.join("lib/deep/.git"),
            "gitdir: ../../.git/modules/lib/deep\n",
        )
        .unwrap();
        std::fs::create_dir_all(f.proj.join("vendor/x/.git")).unwrap();
        std::fs::create_dir_all(f.proj.join("sub/.vibebox")).unwrap();
        let g = plan(&f, &f.proj, true, &[]).unwrap();
        let k = kinds(&g, &f.proj);
        for want in [
            (".git/modules/lib/deep", GuardKind::Writable),
            (".git/modules/lib/deep/config", GuardKind::ReadOnly),
            (".git/modules/lib/deep/hooks", GuardKind::ReadOnly),
            ("lib/deep/.git", GuardKind::ReadOnly),
            ("vendor/x/.git", GuardKind::Pin),
            ("vendor/x/.git/hooks", GuardKind::ReadOnly),
            ("sub/.vibebox", GuardKind::Hide),
        ] {
            assert!(
                k.contains(&(want.0.to_string(), want.1)),
                "{want:?} in {k:?}"
            );
        }
    }

    #[test]
    fn agent_settings_get_placeholders_and_symlinks_are_refused() {
        let f = fixture();
        let claude = f.home.join(".claude");
        std::fs::create_dir_all(claude.join("projects")).unwrap();
        let g = plan(&f, &claude, true, &[]).unwrap();
        let k = kinds(&g, &claude);
        for name in [
            "settings.json",
            "settings.local.json",
            "hooks",
            "commands",
            "agents",
            "plugins",
        ] {
            assert!(
                k.contains(&(name.to_string(), GuardKind::ReadOnly)),
                "{name} in {k:?}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(claude.join("settings.json")).unwrap(),
            "{}\n"
        );
        assert!(!k.iter().any(|(p, _)| p == "projects"));
        // explain does not create anything.
        let codex = f.home.join(".codex");
        std::fs::create_dir_all(&codex).unwrap();
        let g = plan(&f, &codex, false, &[]).unwrap();
        assert_eq!(g.created, vec![codex.join("config.toml")]);
        assert!(!codex.join("config.toml").exists());
        // A symlinked settings file cannot be protected.
        std::fs::remove_file(claude.join("settings.json")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", claude.join("settings.json")).unwrap();
        assert!(matches!(
            plan(&f, &claude, true, &[]),
            Err(ProtectError::Symlink { .. })
        ));
    }

    #[test]
    fn extra_paths_and_a_home_share() {
        let f = fixture();
        std::fs::create_dir_all(f.proj.join("secrets")).unwrap();
        let extra = vec![f.proj.join("secrets"), f.proj.join("missing")];
        let g = plan(&f, &f.proj, true, &extra).unwrap();
        assert!(kinds(&g, &f.proj).contains(&("secrets".into(), GuardKind::ReadOnly)));
        assert_eq!(g.warnings.len(), 1, "{:?}", g.warnings);
        // A share of the whole home protects the project inside it and hides
        // vibebox's state.
        std::fs::create_dir_all(f.root.join("vbhome")).unwrap();
        let g = plan(&f, &f.root, true, &[]).unwrap();
        let k = kinds(&g, &f.root);
        assert!(
            k.contains(&("home/proj/.git/hooks".into(), GuardKind::ReadOnly)),
            "{k:?}"
        );
        assert!(
            k.contains(&("home/proj/.vibebox".into(), GuardKind::Hide)),
            "{k:?}"
        );
        assert!(k.contains(&("vbhome".into(), GuardKind::Hide)), "{k:?}");
    }

    #[test]
    fn hooks_path_directories_are_protected() {
        assert_eq!(
            hooks_path_in(
                "[core]\n\tbare = false\n\thooksPath = .husky\n[user]\n\thooksPath = x\n"
            ),
            Some(".husky".into())
        );
        assert_eq!(hooks_path_in("[core \"x\"]\nhookspath = a\n"), None);
        assert_eq!(
            hooks_path_in("[CORE]\nHooksPath = \"my hooks\"\n"),
            Some("my hooks".into())
        );
        let f = fixture();
        std::fs::write(f.proj.join(".git/config"), "[core]\n\thooksPath = .husky\n").unwrap();
        let g = plan(&f, &f.proj, true, &[]).unwrap();
        assert!(kinds(&g, &f.proj).contains(&(".husky".into(), GuardKind::ReadOnly)));
        assert!(f.proj.join(".husky").is_dir(), "made so the box cannot");
        // A global hooksPath inside a share.
        std::fs::write(
            f.home.join(".gitconfig"),
            "[core]\n\thooksPath = ~/proj/global-hooks\n",
        )
        .unwrap();
        let g = plan(&f, &f.proj, true, &[]).unwrap();
        assert!(kinds(&g, &f.proj).contains(&("global-hooks".into(), GuardKind::ReadOnly)));
    }

    #[test]
    fn read_only_shares_only_hide() {
        let f = fixture();
        let hidden = vec![f.proj.join(".vibebox")];
        let g = plan_share(
            &f.proj,
            MountMode::ReadOnly,
            &ProtectContext {
                project_dir: &f.proj,
                host_home: &f.home,
                hidden: &hidden,
                extra: &[],
                create: true,
            },
        )
        .unwrap();
        assert_eq!(
            kinds(&g, &f.proj),
            vec![(".vibebox".into(), GuardKind::Hide)]
        );
    }
}
