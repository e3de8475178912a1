//! `vibebox restore`: a save back into a new directory, or into the project
//! when nothing unsaved would be lost.
//!
//! Every bundle a save needs (its own and those it builds on) is downloaded,
//! its size and SHA-256 checked against the index, verified by git and
//! fetched with object checks (`transfer.fsckObjects`) before a single file
//! is written. A new directory is built beside its final place and renamed
//! into it at the end, so a failed restore leaves nothing half-made.

use std::fs;
use std::path::{Path, PathBuf};

use crate::entry::SaveEntry;
use crate::history;
use crate::remote::Remote;
use crate::workspace::{io, Workspace};
use crate::{human_size, Report, SaveLock, StoreError};

/// The longest chain of bundles a restore follows (a store that loops is damaged).
pub const MAX_RESTORE_CHAIN: usize = 64;

/// How a restore ended.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The save.
    pub entry: SaveEntry,
    /// Where its files are.
    pub directory: PathBuf,
    /// How many bundles were downloaded.
    pub bundles: usize,
}

/// Brings the commit of `entry` into the repository of `ws`, downloading the
/// bundles it needs; returns how many.
fn fetch(
    remote: &Remote,
    ws: &Workspace,
    state: &Path,
    entry: &SaveEntry,
    report: &mut dyn FnMut(Report),
) -> Result<usize, StoreError> {
    let mut chain = vec![entry.clone()];
    while let Some(last) = chain.last() {
        if ws.has(&last.commit) {
            chain.pop();
            break;
        }
        let Some(base) = last.base.clone() else {
            break;
        };
        if chain.len() >= MAX_RESTORE_CHAIN {
            return Err(StoreError::Damaged {
                id: entry.id.clone(),
                why: format!("its chain of bundles is longer than {MAX_RESTORE_CHAIN}"),
            });
        }
        let next = history::find_exact(remote, &base).map_err(|e| StoreError::Damaged {
            id: entry.id.clone(),
            why: format!("the save it builds on, {base}, cannot be read: {e}"),
        })?;
        chain.push(next);
    }
    let total: u64 = chain.iter().map(|e| e.bundle_size).sum();
    if !chain.is_empty() {
        report(Report::Step(format!(
            "downloading {} bundle{} ({})",
            chain.len(),
            if chain.len() == 1 { "" } else { "s" },
            human_size(total)
        )));
    }
    let n = chain.len();
    for e in chain.iter().rev() {
        let file = state.join(format!("restore-{}.bundle", e.id));
        let result = (|| {
            let damaged = |why: String| StoreError::Damaged {
                id: e.id.clone(),
                why,
            };
            let sum = remote
                .download(&e.bundle_key(), &file, e.bundle_size)
                .map_err(|err| match err {
                    crate::RemoteError::Damaged { why, .. } => damaged(why),
                    crate::RemoteError::NotFound { .. } => {
                        damaged("the bundle is missing from the store".into())
                    }
                    other => other.into(),
                })?;
            if sum != e.bundle_sha256 {
                return Err(damaged("its checksum does not match the index".into()));
            }
            let f = file.display().to_string();
            ws.git()
                .run(&["bundle", "verify", "-q", &f])
                .map_err(|err| damaged(err.to_string()))?;
            let refspec = format!("refs/vibebox/save/{0}:refs/vibebox/save/{0}", e.id);
            ws.git()
                .run(&[
                    "-c",
                    "transfer.fsckObjects=true",
                    "fetch",
                    "-q",
                    "--no-tags",
                    "--no-write-fetch-head",
                    &f,
                    &refspec,
                ])
                .map_err(|err| damaged(err.to_string()))?;
            if !ws.has(&e.commit) {
                return Err(damaged(
                    "it does not hold the commit the index names".into(),
                ));
            }
            Ok(())
        })();
        let _ = fs::remove_file(&file);
        result?;
    }
    if !ws.has(&entry.commit) {
        return Err(StoreError::Damaged {
            id: entry.id.clone(),
            why: "its commit is missing after the download".into(),
        });
    }
    Ok(n)
}

/// Refuses a save with a path vibebox or git keeps for itself.
fn check_paths(ws: &Workspace, entry: &SaveEntry) -> Result<(), StoreError> {
    let out = ws
        .git()
        .run(&["ls-tree", "-r", "-z", "--name-only", &entry.commit])?;
    for path in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path);
        let bad = path
            .split('/')
            .any(|c| c == ".vibebox" || c.eq_ignore_ascii_case(".git") || c == ".." || c == ".");
        if bad {
            return Err(StoreError::Damaged {
                id: entry.id.clone(),
                why: format!(
                    "it holds the path `{}`, which a save never has",
                    vibebox_core::text::for_terminal(&path)
                ),
            });
        }
    }
    Ok(())
}

/// Restores `entry` into `dir`, which must not exist or be empty.
pub fn into_new(
    remote: &Remote,
    entry: &SaveEntry,
    dir: &Path,
    report: &mut dyn FnMut(Report),
) -> Result<Restored, StoreError> {
    match fs::symlink_metadata(dir) {
        Err(_) => {}
        Ok(m) if m.is_dir() && fs::read_dir(dir).map_err(io("read", dir))?.next().is_none() => {}
        Ok(_) => {
            return Err(StoreError::refused(
                format!(
                    "{} already exists and is not an empty directory",
                    dir.display()
                ),
                "name a new directory with --into",
            ))
        }
    }
    let name = dir.file_name().ok_or_else(|| {
        StoreError::refused(
            format!("{} has no name", dir.display()),
            "name a new directory",
        )
    })?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = fs::canonicalize(parent).map_err(io("find", parent))?;
    let tmp = parent.join(format!(
        ".{}.vibebox-restore-{}",
        name.to_string_lossy(),
        &crate::entry::new_save_id()[..6]
    ));
    fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    let result = (|| {
        let project = vibebox_core::project::Project::at(&tmp);
        project
            .ensure_state_dir()
            .map_err(|e| StoreError::refused(e.to_string(), "check the directory"))?;
        let state = project.state_dir();
        let ws = Workspace::open(&tmp, &state)?;
        let bundles = fetch(remote, &ws, &state, entry, report)?;
        check_paths(&ws, entry)?;
        report(Report::Step(format!("writing {} files", entry.files)));
        let index = state.join("save.index");
        let g = ws.git_with_index(&index);
        g.run(&["read-tree", &entry.commit])?;
        g.run(&["checkout-index", "-a", "-f", "-q"])?;
        if let Some(gs) = &entry.git {
            restore_user_repo(&ws, &tmp, gs)?;
        }
        ws.set_setting("workspace", &entry.workspace.to_string())?;
        ws.git().run(&[
            "update-ref",
            &format!("refs/vibebox/saves/{}", entry.workspace),
            &entry.commit,
        ])?;
        ws.set_last_save(&entry.id, &entry.commit, entry.depth)?;
        if fs::symlink_metadata(dir).is_ok() {
            fs::remove_dir(dir).map_err(io("replace", dir))?;
        }
        fs::rename(&tmp, dir).map_err(io("move the restored files to", dir))?;
        Ok(bundles)
    })();
    match result {
        Ok(bundles) => Ok(Restored {
            entry: entry.clone(),
            directory: dir.to_path_buf(),
            bundles,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Makes the person's repository in `dir` as it was at the save: HEAD on the
/// same branch and commit, the staging area as it was.
fn restore_user_repo(
    ws: &Workspace,
    dir: &Path,
    gs: &crate::entry::GitState,
) -> Result<(), StoreError> {
    let git = crate::git::Git::new(dir)
        .env("GIT_DIR", dir.join(".git"))
        .env("GIT_WORK_TREE", dir);
    crate::git::Git::new(dir).run(&["init", "-q", "."])?;
    let repo = ws.repo().display().to_string();
    let mut tmp_refs = Vec::new();
    for (name, commit) in [("head", &gs.head), ("index", &gs.index)] {
        if let Some(c) = commit {
            let r = format!("refs/vibebox/restore/{name}");
            ws.git().run(&["update-ref", &r, c])?;
            tmp_refs.push(r);
        }
    }
    let fetched = (|| {
        if tmp_refs.is_empty() {
            return Ok(());
        }
        let specs: Vec<String> = tmp_refs.iter().map(|r| format!("+{r}:{r}")).collect();
        let mut args = vec![
            "fetch",
            "-q",
            "--no-tags",
            "--no-write-fetch-head",
            "--update-head-ok",
            &repo,
        ];
        args.extend(specs.iter().map(String::as_str));
        git.run(&args)?;
        match (&gs.branch, &gs.head) {
            (Some(b), Some(h)) => {
                git.run(&["update-ref", &format!("refs/heads/{b}"), h])?;
                git.run(&["symbolic-ref", "HEAD", &format!("refs/heads/{b}")])?;
            }
            (Some(b), None) => {
                git.run(&["symbolic-ref", "HEAD", &format!("refs/heads/{b}")])?;
            }
            (None, Some(h)) => {
                git.run(&["update-ref", "--no-deref", "HEAD", h])?;
            }
            (None, None) => {}
        }
        if let Some(i) = &gs.index {
            git.run(&["read-tree", i])?;
        }
        for r in &tmp_refs {
            git.run(&["update-ref", "-d", r])?;
        }
        // Stat information for the files just written, so `git status` is quiet.
        let _ = git.run(&["update-index", "-q", "--refresh"]);
        Ok::<(), StoreError>(())
    })();
    for r in &tmp_refs {
        let _ = ws.git().run(&["update-ref", "-d", r]);
    }
    fetched
}

/// Restores `entry` into the project whose `.vibebox/` is `state`, only when
/// its current files are those of a save it has (or it has none).
pub fn in_place(
    remote: &Remote,
    entry: &SaveEntry,
    project: &Path,
    state: &Path,
    report: &mut dyn FnMut(Report),
) -> Result<Restored, StoreError> {
    let _lock = SaveLock::take(project, state)?;
    let ws = Workspace::open(project, state)?;
    ws.clean_interrupted()?;
    let user = ws.user_repo().ok().flatten();
    report(Report::Step("checking for unsaved changes".into()));
    let cap = ws.capture(user.as_ref())?;
    let bundles = in_place_from(remote, entry, &ws, &cap, state, report)?;
    if let (Some(u), Some(gs)) = (&user, &entry.git) {
        if u.head != gs.head || u.branch != gs.branch {
            report(Report::Warning(format!(
                "the save was made on {} at {}; your repository is on {} at {} (its HEAD, branch and staging area were left as they are)",
                gs.branch.as_deref().unwrap_or("a detached HEAD"),
                short(gs.head.as_deref()),
                u.branch.as_deref().unwrap_or("a detached HEAD"),
                short(u.head.as_deref()),
            )));
        }
    }
    Ok(Restored {
        entry: entry.clone(),
        directory: project.to_path_buf(),
        bundles,
    })
}

fn in_place_from(
    remote: &Remote,
    entry: &SaveEntry,
    ws: &Workspace,
    cap: &crate::workspace::Captured,
    state: &Path,
    report: &mut dyn FnMut(Report),
) -> Result<usize, StoreError> {
    let project = ws.project();
    let empty = ws
        .git()
        .run_with_input(&["hash-object", "-t", "tree", "--stdin"], Some(b""))?
        .text();
    if cap.tree != empty && !ws.saved_trees()?.contains(&cap.tree) {
        return Err(StoreError::refused(
            format!(
                "{} has unsaved changes: its {} files are not those of any save made or restored here",
                project.display(),
                cap.paths.len()
            ),
            "run `vibebox save` first, or restore into a new directory with --into DIR",
        ));
    }
    let bundles = fetch(remote, ws, state, entry, report)?;
    check_paths(ws, entry)?;
    report(Report::Step(format!("writing {} files", entry.files)));
    ws.git_with_index(&cap.index)
        .run(&["read-tree", "-m", "-u", &cap.tree, &entry.commit])?;
    if ws.id().is_none() {
        ws.set_setting("workspace", &entry.workspace.to_string())?;
    }
    ws.set_last_save(&entry.id, &entry.commit, entry.depth)?;
    let _ = ws.git().run(&["config", "--unset", "vibebox.lastState"]);
    Ok(bundles)
}

fn short(c: Option<&str>) -> String {
    c.map(|c| c[..c.len().min(12)].to_string())
        .unwrap_or_else(|| "no commit".into())
}
