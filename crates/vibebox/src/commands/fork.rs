//! `vibebox fork DIR [--from SNAPSHOT]`: a new project directory and session
//! that start where this one is.
//!
//! The directory is a copy of the project (reflinks where the filesystem has
//! them), `.vibebox/` left out; a git repository gets a new branch
//! `fork/<name>` checked out at the same commit, with the working tree,
//! staging area, untracked and ignored files as they were. (Not a `git
//! worktree`: its metadata would stay in the parent's `.git`, which the
//! fork's box can neither see nor be allowed to write.)
//!
//! The session is new (its own id, keys, logs); its disk is a copy of the
//! parent's (sparse, reflinked where possible) made while the parent is at
//! rest, or while its box is paused for the copy when it runs (the guest
//! syncs first). Without `--from`, the parent's memory comes too when it
//! has one — copied in the same pause when it runs, or its suspended state —
//! so the fork resumes where the parent was (its project mount moved to the
//! fork's path, the fork's own client key handed in); otherwise it boots.
//! Parent and fork never share a writable file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use jiff::Timestamp;
use vibebox_core::project::{Project, STATE_DIR};
use vibebox_core::session;
use vibebox_core::trust::TrustStore;
use vibebox_supervisor::protocol::{self as control, SessionState};

use crate::context::Context;
use crate::error::hinted;

/// Runs `vibebox fork DIR [--from SNAPSHOT]`.
pub fn run(ctx: &Context, dir: &Path, from: Option<&str>) -> anyhow::Result<()> {
    let parent = Project::find(&ctx.cwd);
    let Some(parent_id) = parent.read_session_id()? else {
        return Err(hinted(
            format!("{} has no session to fork", parent.dir().display()),
            "run `vibebox` here first",
        ));
    };
    if !parent.disk_path().is_file() {
        return Err(if parent.state_dir().join("container").exists() {
            hinted(
                "the container runtime cannot fork a box yet",
                "fork works for boxes of the VM runtime (`runtime = \"vm\"`)",
            )
        } else {
            hinted(
                format!("the box of {} has no disk yet", parent.dir().display()),
                "start it once (`vibebox exec -- true`), then fork",
            )
        });
    }
    if parent.dir().join(".git").is_file() {
        return Err(hinted(
            format!(
                "{} is a git worktree or submodule: its .git is shared with another directory",
                parent.dir().display()
            ),
            "fork the main repository instead",
        ));
    }
    let dest = destination(&ctx.cwd, dir)?;
    if dest.starts_with(parent.dir()) || parent.dir().starts_with(&dest) {
        bail!(
            "{} is inside {} (or holds it): choose a directory outside the project",
            dest.display(),
            parent.dir().display()
        );
    }
    let made = (|| -> anyhow::Result<(uuid::Uuid, Option<String>, bool, bool)> {
        eprintln!(
            "vibebox: copying {} to {}",
            parent.dir().display(),
            dest.display()
        );
        copy_tree(parent.dir(), &dest)?;
        let branch = new_branch(&dest)?;
        let child = Project::at(&dest);
        let (entry, _) = session::connect(&ctx.index, &child, Timestamp::now())?;
        ctx.index.update(|entries| {
            if let Some(e) = entries.iter_mut().find(|e| e.id == entry.id) {
                e.forked_from = Some(parent_id);
            }
            Ok::<_, anyhow::Error>(())
        })?;
        let copy = child.state_dir().join(".disk.fork.tmp");
        // Without --from, the parent's memory comes along when it has one
        // (running, or suspended): the fork resumes where the parent is.
        let memory_dir = child.state_dir().join(".memory.fork.tmp");
        let wanted = from.is_none().then_some(memory_dir.as_path());
        let (paused, memory) = copy_parent_disk(ctx, &parent, &copy, wanted)?;
        vibebox_vm::snapshot::adopt_fork_disk(&parent, &child, &copy, from)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if memory {
            vibebox_vm::snapshot::adopt_fork_memory(&parent, &child, &ctx.home, &memory_dir)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // The person forked their own project: what they accepted for it
        // holds for the fork (its config is the same file, as it was).
        let trust = TrustStore::new(&ctx.home);
        if let Some(accepted) = trust.accepted(&parent_id)? {
            trust.accept(&entry.id, &dest, &accepted)?;
        }
        Ok((entry.id, branch, paused, memory))
    })();
    let (id, branch, paused, memory) = match made {
        Ok(m) => m,
        Err(e) => {
            // Nothing half-made stays: the directory was new.
            if let Ok(Some(id)) = Project::at(&dest).read_session_id() {
                let _ = ctx.index.update(|entries| {
                    entries.retain(|x| x.id != id);
                    Ok::<_, anyhow::Error>(())
                });
            }
            let _ = fs::remove_dir_all(&dest);
            return Err(e.context(format!("cannot fork into {}", dest.display())));
        }
    };
    println!("forked {} into {}", parent.dir().display(), dest.display());
    println!("session {id} (fork of {parent_id})");
    if let Some(b) = branch {
        println!("git branch {b} checked out there");
    }
    if paused {
        println!(
            "the running box was paused for the copy of its {} and goes on",
            if memory { "disk and memory" } else { "disk" }
        );
    }
    if memory {
        println!("the fork resumes where the parent was: its processes run on in it");
    }
    if let Some(s) = from {
        println!("its disk is snapshot `{s}` of the parent's");
    }
    println!(
        "next: cd {} && vibebox",
        crate::attach::shell_quote(&dest.display().to_string())
    );
    Ok(())
}

/// `dir` made absolute (its parent must exist), and new.
fn destination(cwd: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let joined = cwd.join(dir);
    let name = joined
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .with_context(|| format!("{} does not name a new directory", dir.display()))?
        .to_owned();
    let parent = joined.parent().unwrap_or(Path::new("/"));
    let parent =
        fs::canonicalize(parent).with_context(|| format!("{} does not exist", parent.display()))?;
    let dest = parent.join(name);
    if fs::symlink_metadata(&dest).is_ok() {
        bail!(
            "{} exists already: fork into a new directory",
            dest.display()
        );
    }
    if dest.to_str().is_none() {
        bail!("{} is not valid UTF-8", dest.display());
    }
    Ok(dest)
}

/// Copies the project at `from` to the new directory `to`, every
/// `.vibebox/` (this session's and nested projects') left out.
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut entries = Vec::new();
    for e in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        if e.file_name() != STATE_DIR {
            entries.push(e.path());
        }
    }
    if !entries.is_empty() {
        let out = Command::new("cp")
            .args(["-a", "--reflink=auto", "--"])
            .args(&entries)
            .arg(to)
            .output()
            .context("cannot run cp")?;
        if !out.status.success() {
            bail!(
                "cannot copy the project: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    remove_nested_state(to)
}

/// Removes the `.vibebox/` of nested projects in the copy (their sessions
/// stay with the parent; the fork's nested projects get their own).
fn remove_nested_state(dir: &Path) -> anyhow::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        let Ok(kind) = e.file_type() else { continue };
        if !kind.is_dir() {
            continue;
        }
        let path = e.path();
        if e.file_name() == STATE_DIR {
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        } else if e.file_name() != ".git" {
            remove_nested_state(&path)?;
        }
    }
    Ok(())
}

/// In a copied git repository, a new branch `fork/<dir name>` (made unique)
/// at HEAD, checked out without touching the working tree or the index. No
/// hook runs.
fn new_branch(dest: &Path) -> anyhow::Result<Option<String>> {
    if !dest.join(".git").is_dir() {
        return Ok(None);
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
                "-C",
            ])
            .arg(dest)
            .args(args)
            .output()
            .context("cannot run git")
    };
    let name: String = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = format!("fork/{}", name.trim_matches('-'));
    let mut branch = base.clone();
    for n in 2.. {
        let taken = git(&[
            "show-ref",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ])?;
        if !taken.status.success() {
            break;
        }
        branch = format!("{base}-{n}");
    }
    let ok = |o: std::process::Output, what: &str| -> anyhow::Result<()> {
        if o.status.success() {
            Ok(())
        } else {
            bail!("git {what}: {}", String::from_utf8_lossy(&o.stderr).trim())
        }
    };
    ok(
        git(&["check-ref-format", "--branch", &branch])?,
        "check-ref-format",
    )?;
    if git(&["rev-parse", "--verify", "-q", "HEAD"])?
        .status
        .success()
    {
        ok(git(&["branch", "--", &branch])?, "branch")?;
    }
    ok(
        git(&["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")])?,
        "symbolic-ref",
    )?;
    Ok(Some(branch))
}

/// Copies the parent's disk to `copy`, and its memory into the new
/// directory `memory` when asked and it has one: at rest (a suspended box's
/// saved memory), with the start lock held so that no box starts on it
/// meanwhile; or through its supervisor, which pauses the running box for
/// the copy. Returns whether it was paused and whether the memory came.
fn copy_parent_disk(
    ctx: &Context,
    parent: &Project,
    copy: &Path,
    memory: Option<&Path>,
) -> anyhow::Result<(bool, bool)> {
    let socket = parent.socket_path();
    let lock_path = parent.state_dir().join("spawn.lock");
    let lock = vibebox_supervisor::supervise::open_lock_file(&lock_path)
        .map_err(crate::runtime::supervisor_error)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .context("cannot lock the session")?;
    let vm = |e: vibebox_vm::VmError| anyhow::anyhow!("{e}");
    match control::status(&socket) {
        None => {
            vibebox_vm::snapshot::copy_disk_at_rest(parent, copy).map_err(vm)?;
            let with_memory = match memory {
                Some(dir) => vibebox_vm::snapshot::copy_suspended_memory(parent, &ctx.home, dir)
                    .map_err(vm)?,
                None => false,
            };
            Ok((false, with_memory))
        }
        Some(s) if s.state == SessionState::Running => {
            drop(lock);
            eprintln!(
                "vibebox: the box runs: pausing it for the copy of its {}",
                if memory.is_some() {
                    "disk and memory"
                } else {
                    "disk"
                }
            );
            let answer = control::copy_disk(&socket, copy, memory)?;
            if !answer.ok {
                bail!("cannot copy the running box: {}", answer.message);
            }
            Ok((true, memory.is_some()))
        }
        Some(s) => bail!(
            "the box of {} is {}: try again when it runs or has stopped",
            parent.dir().display(),
            s.state
        ),
    }
}
