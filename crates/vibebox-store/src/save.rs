//! `vibebox save`: the project's state, as a commit, as a bundle, in the store.
//!
//! Order, so that nothing is lost whenever it stops: the commit is made in
//! vibebox's repository (nothing of the person's is touched), the bundle is
//! verified and uploaded under a new unique key, then the index entry is
//! written once (conditional put), and only then does the project record the
//! save as its latest. An interrupted save leaves at most a bundle nobody
//! lists; the last good save stays the latest.

use std::fs;
use std::io::Read as _;
use std::path::Path;

use jiff::Timestamp;
use sha2::Digest as _;
use uuid::Uuid;

use crate::entry::{new_save_id, GitState, SaveEntry, MAX_MESSAGE};
use crate::remote::{hex, Remote};
use crate::workspace::{looks_secret, Workspace};
use crate::{human_size, Report, SaveLock, StoreError};

/// How many bundles a restore may have to read: after this many incremental
/// saves, the next is a full one.
pub const MAX_CHAIN: u32 = 16;

/// What to save.
#[derive(Debug, Clone)]
pub struct SaveRequest<'a> {
    /// The project directory (canonical).
    pub project: &'a Path,
    /// Its `.vibebox/` (exists, checked).
    pub state: &'a Path,
    /// Its session, when it has one.
    pub session: Option<Uuid>,
    /// What the person said about it.
    pub message: Option<String>,
}

/// How a save ended.
#[derive(Debug, Clone)]
pub enum SaveOutcome {
    /// A new save is in the store.
    Saved {
        /// Its index entry.
        entry: Box<SaveEntry>,
        /// Paths that look like secrets and were saved.
        secrets: Vec<String>,
    },
    /// Nothing changed since the save with this id; nothing was uploaded.
    Unchanged(String),
}

/// Saves the project of `req` to `remote`.
pub fn save(
    remote: &Remote,
    req: &SaveRequest,
    report: &mut dyn FnMut(Report),
) -> Result<SaveOutcome, StoreError> {
    let _lock = SaveLock::take(req.project, req.state)?;
    let ws = Workspace::open(req.project, req.state)?;
    ws.clean_interrupted()?;
    let workspace = match ws.id() {
        Some(id) => id,
        None => {
            let id = req.session.unwrap_or_else(Uuid::now_v7);
            ws.set_setting("workspace", &id.to_string())?;
            id
        }
    };
    let user = match ws.user_repo() {
        Ok(u) => u,
        Err(e) => {
            report(Report::Warning(format!(
                "{e}; saving the files without the repository's history"
            )));
            None
        }
    };
    report(Report::Step("reading the project's files".into()));
    let cap = ws.capture(user.as_ref())?;
    for n in &cap.nested_repos {
        report(Report::Warning(format!(
            "{} is a git repository of its own: only its commit is recorded, not its files",
            vibebox_core::text::for_terminal(n)
        )));
    }
    for u in &cap.unreadable {
        report(Report::Warning(format!("not saved: {u}")));
    }
    let head = user.as_ref().and_then(|u| u.head.clone());
    let state = format!(
        "{} {} {}",
        cap.tree,
        head.as_deref().unwrap_or("-"),
        cap.index_tree.as_deref().unwrap_or("-")
    );
    let prev = ws.last_save().filter(|(_, c, _)| ws.has(c));
    if let Some((id, _, _)) = &prev {
        if ws.setting("lastState").as_deref() == Some(state.as_str())
            && remote.exists(&crate::entry::bundle_key(id))?
        {
            return Ok(SaveOutcome::Unchanged(id.clone()));
        }
    }

    let git = ws.git();
    let when = Timestamp::now();
    let who = [
        ("GIT_AUTHOR_NAME", "vibebox"),
        ("GIT_AUTHOR_EMAIL", "vibebox@localhost"),
        ("GIT_COMMITTER_NAME", "vibebox"),
        ("GIT_COMMITTER_EMAIL", "vibebox@localhost"),
    ];
    let git = who.iter().fold(git, |g, (k, v)| g.env(k, v));
    let index_commit = match (&user, &cap.index_tree) {
        (Some(_), Some(tree)) => {
            let mut args = vec!["commit-tree".to_string(), tree.clone()];
            if let Some(h) = &head {
                args.extend(["-p".into(), h.clone()]);
            }
            args.extend(["-m".into(), "vibebox: the staging area".into()]);
            Some(git.run(&args)?.text())
        }
        _ => None,
    };
    let message: String = req
        .message
        .clone()
        .unwrap_or_else(|| "saved by vibebox".into())
        .chars()
        .take(MAX_MESSAGE)
        .collect();
    let mut args = vec!["commit-tree".to_string(), cap.tree.clone()];
    for p in [
        prev.as_ref().map(|p| &p.1),
        head.as_ref(),
        index_commit.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        args.extend(["-p".into(), p.clone()]);
    }
    args.extend(["-m".into(), message.clone()]);
    let commit = git.run(&args)?.text();
    let id = new_save_id();
    let save_ref = format!("refs/vibebox/save/{id}");
    git.run(&["update-ref", &save_ref, &commit])?;
    let forget = |why: StoreError| {
        let _ = ws.git().run(&["update-ref", "-d", &save_ref]);
        why
    };

    // Incremental on the previous save when the store still has it.
    let (base, depth) = match &prev {
        Some((pid, pcommit, pdepth)) if *pdepth < MAX_CHAIN => {
            match remote.exists(&crate::entry::bundle_key(pid)) {
                Ok(true) => (Some((pid.clone(), pcommit.clone())), pdepth + 1),
                Ok(false) => (None, 1),
                Err(e) => return Err(forget(e.into())),
            }
        }
        _ => (None, 1),
    };
    report(Report::Step(match &base {
        Some((pid, _)) => format!("making an incremental bundle on save {pid}"),
        None => "making a bundle".into(),
    }));
    let bundle = req.state.join(format!("save-{id}.bundle"));
    let result = (|| {
        let mut args = vec![
            "bundle".to_string(),
            "create".into(),
            "-q".into(),
            bundle.display().to_string(),
            save_ref.clone(),
        ];
        if let Some((_, pcommit)) = &base {
            args.push(format!("^{pcommit}"));
        }
        ws.git().run(&args)?;
        ws.git()
            .run(&["bundle", "verify", "-q", &bundle.display().to_string()])?;
        let (size, sha256) = checksum(&bundle)?;
        let secrets: Vec<String> = cap
            .paths
            .iter()
            .filter(|p| looks_secret(p))
            .map(|p| vibebox_core::text::for_terminal(p))
            .collect();
        if !secrets.is_empty() {
            let shown: Vec<&str> = secrets.iter().take(10).map(String::as_str).collect();
            let more = secrets.len().saturating_sub(10);
            report(Report::Warning(format!(
                "these files look like secrets and are not excluded by .gitignore; they are saved to the store: {}{}",
                shown.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() }
            )));
        }
        report(Report::Step(format!(
            "uploading {} to {}",
            human_size(size),
            remote.url()
        )));
        let bundle_key = crate::entry::bundle_key(&id);
        remote.upload(&bundle_key, &bundle, &mut |_| {})?;
        let entry = SaveEntry {
            version: 1,
            id: id.clone(),
            workspace,
            session: req.session,
            time: when,
            message,
            directory: req.project.to_path_buf(),
            host: hostname(),
            commit: commit.clone(),
            files: cap.paths.len() as u64,
            bundle_size: size,
            bundle_sha256: sha256,
            base: base.as_ref().map(|(b, _)| b.clone()),
            depth,
            git: user.as_ref().map(|u| GitState {
                head: u.head.clone(),
                branch: u.branch.clone(),
                index: index_commit.clone(),
            }),
        };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| {
            StoreError::refused(format!("cannot write the index entry: {e}"), "report this")
        })?;
        if let Err(e) = remote.put_new(&entry.key(), json) {
            // The bundle alone is never listed; remove it if we can.
            let _ = remote.delete(&bundle_key);
            return Err(e.into());
        }
        Ok((entry, secrets))
    })();
    let (entry, secrets) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&bundle);
            return Err(forget(e));
        }
    };
    // The store has it: now it is this project's latest save.
    let tip = format!("refs/vibebox/saves/{workspace}");
    ws.git().run(&["update-ref", &tip, &commit])?;
    ws.mark_stored(&id, &commit)?;
    ws.set_last_save(&id, &commit, depth)?;
    ws.set_setting("lastState", &state)?;
    if user.is_some() {
        // The objects borrowed from the person's repository become ours, so a
        // later `git gc` there cannot take them from under the saves.
        let b = bundle.display().to_string();
        if ws.git().run(&["bundle", "unbundle", &b]).is_ok() {
            let _ = ws.git().run(&["prune-packed", "-q"]);
        }
    }
    let _ = fs::remove_file(&bundle);
    Ok(SaveOutcome::Saved {
        entry: Box::new(entry),
        secrets,
    })
}

fn checksum(path: &Path) -> Result<(u64, String), StoreError> {
    let mut file = fs::File::open(path).map_err(crate::workspace::io("read", path))?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(crate::workspace::io("read", path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hash.update(&buf[..n]);
    }
    Ok((size, hex(&hash.finalize())))
}

/// This machine's name, for the history.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
