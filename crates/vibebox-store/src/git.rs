//! Running `git` on the host, on a tree the box can write.
//!
//! The project's files, its `.gitignore`s and `.gitattributes`, and most of
//! its `.git/` are written by the box. vibebox's hardening keeps the parts of
//! `.git/` that make git run commands (`config`, `hooks/`, `commondir`)
//! read-only in the box, so git here is as safe as the person's own `git
//! status`; on top of that every invocation:
//! - starts from an environment with no inherited `GIT_*` variable (a
//!   `GIT_DIR` in the person's shell must not redirect a save);
//! - turns off what could run a program or reshape the object graph:
//!   hooks, the fsmonitor, replace refs, signing, automatic gc;
//! - never asks on a terminal (`GIT_TERMINAL_PROMPT=0`, no pager, no editor);
//! - speaks C locale, so messages can be matched.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vibebox_core::text::for_terminal;

/// The most bytes of git's standard error an error message keeps.
const MAX_STDERR: usize = 4096;

/// A git command that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// git could not be started at all.
    #[error("cannot run git: {0} (install git: apt-get install git)")]
    Spawn(std::io::Error),
    /// git ran and failed.
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        /// The arguments, for the message.
        args: String,
        /// How it ended.
        status: String,
        /// What it said, escaped and cut.
        stderr: String,
    },
}

/// What a command printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output, as bytes.
    pub stdout: Vec<u8>,
    /// Standard error, as text (lossy).
    pub stderr: String,
}

impl Output {
    /// Standard output as text, without the final newline.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }
}

/// One configured way to run git: a directory and environment variables.
#[derive(Debug, Clone)]
pub struct Git {
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Git {
    /// git run in `cwd`.
    pub fn new(cwd: &Path) -> Git {
        Git {
            cwd: cwd.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// The same, with one more environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Git {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    fn command(&self, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new("git");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GIT_") {
                cmd.env_remove(&k);
            }
        }
        cmd.current_dir(&self.cwd)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_PAGER", "cat")
            .env("GIT_EDITOR", "false")
            .env("LC_ALL", "C")
            .args([
                "-c",
                "core.fsmonitor=false",
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "commit.gpgSign=false",
                "-c",
                "gc.auto=0",
                "-c",
                "maintenance.auto=false",
                "-c",
                "core.quotePath=false",
                "-c",
                "advice.addEmbeddedRepo=false",
            ])
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `git ARGS`; its output, or an error with what it said.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output, GitError> {
        self.run_with_input(args, None)
    }

    /// Runs `git ARGS` with `input` on its standard input.
    pub fn run_with_input<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        input: Option<&[u8]>,
    ) -> Result<Output, GitError> {
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        let mut cmd = self.command(&args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(GitError::Spawn)?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            // A writer thread: git may fill its stdout before reading all input.
            let bytes = bytes.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        let out = child.wait_with_output().map_err(GitError::Spawn)?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            return Err(GitError::Failed {
                args: describe(&args),
                status: out.status.to_string(),
                stderr: cut(&stderr),
            });
        }
        Ok(Output {
            stdout: out.stdout,
            stderr,
        })
    }

    /// Runs `git ARGS` and says only whether it succeeded (for questions
    /// like `cat-file -e`).
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<bool, GitError> {
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        let status = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(GitError::Spawn)?;
        Ok(status.success())
    }
}

fn describe(args: &[&OsStr]) -> String {
    let words: Vec<String> = args
        .iter()
        .map(|a| for_terminal(&a.to_string_lossy()))
        .collect();
    words.join(" ")
}

fn cut(stderr: &str) -> String {
    let mut s = stderr.trim().to_string();
    if s.len() > MAX_STDERR {
        let mut end = MAX_STDERR;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    for_terminal(&s)
}

/// True when `s` is a full object name (SHA-1 or SHA-256, lowercase hex).
pub fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_full_lowercase_hex() {
        assert!(is_object_id(&"a".repeat(40)));
        assert!(is_object_id(&"0".repeat(64)));
        assert!(!is_object_id(&"A".repeat(40)));
        assert!(!is_object_id("abc"));
        assert!(!is_object_id(&format!("{}-", "a".repeat(39))));
    }

    #[test]
    fn an_inherited_git_dir_does_not_redirect_git() {
        let dir = tempfile::tempdir().unwrap();
        let git = Git::new(dir.path());
        git.run(&["init", "-q", "."]).unwrap();
        let other = tempfile::tempdir().unwrap();
        Git::new(other.path())
            .run(&["init", "-q", "--bare", "."])
            .unwrap();
        // What a person's shell might export; the runner drops it.
        let out = Command::new("git")
            .env("GIT_DIR", other.path())
            .current_dir(dir.path())
            .args(["rev-parse", "--git-dir"])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&*other.path().to_string_lossy()));
        std::env::set_var("GIT_DIR", other.path());
        let ours = git
            .run(&["rev-parse", "--absolute-git-dir"])
            .unwrap()
            .text();
        std::env::remove_var("GIT_DIR");
        assert_eq!(Path::new(&ours), dir.path().join(".git"));
    }

    #[test]
    fn failures_say_what_git_said_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let e = Git::new(dir.path())
            .run(&["rev-parse", "--verify", "x\x1b[2Jy"])
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("rev-parse"), "{s}");
        assert!(!s.contains('\x1b'), "{s}");
    }
}
