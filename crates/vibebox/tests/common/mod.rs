//! Helpers shared by the end-to-end tests: a private `VIBEBOX_HOME`, a private
//! `HOME` and project directories under one temporary root.

#![allow(dead_code)]

pub mod vm;

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// One isolated world: its own VIBEBOX_HOME, HOME and projects.
pub struct World {
    root: tempfile::TempDir,
    /// The runtime a VM/container test starts boxes with (`VIBEBOX_RUNTIME`).
    pub runtime: Option<&'static str>,
}

impl World {
    pub fn new() -> World {
        let root = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(root.path().join("home")).unwrap();
        fs::create_dir_all(root.path().join("vibebox-home")).unwrap();
        World {
            root,
            runtime: None,
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The `HOME` of the world.
    pub fn home(&self) -> PathBuf {
        self.root().join("home")
    }

    /// The `VIBEBOX_HOME` of the world.
    pub fn vibebox_home(&self) -> PathBuf {
        self.root().join("vibebox-home")
    }

    /// `sessions.toml`.
    pub fn index_path(&self) -> PathBuf {
        self.vibebox_home().join("sessions.toml")
    }

    /// A new empty project directory `name` (its path canonicalised).
    pub fn project(&self, name: &str) -> PathBuf {
        let p = self.root().join(name);
        fs::create_dir_all(&p).unwrap();
        fs::canonicalize(p).unwrap()
    }

    /// `vibebox ARGS` run in `dir`.
    pub fn vibebox(&self, dir: &Path) -> Command {
        let mut c = Command::cargo_bin("vibebox").unwrap();
        c.current_dir(dir)
            .env("HOME", self.home())
            .env("VIBEBOX_HOME", self.vibebox_home())
            // No QEMU on this PATH: the foundation tests never boot a machine
            // (VM tests set their own PATH).
            .env("PATH", self.root().join("no-programs"));
        c
    }

    /// The parsed index as TOML (panics if it is not valid TOML).
    pub fn index(&self) -> toml::Table {
        match fs::read_to_string(self.index_path()) {
            Ok(s) => s.parse().expect("index is valid TOML"),
            Err(_) => toml::Table::new(),
        }
    }

    /// The sessions of the index: (id, directory).
    pub fn sessions(&self) -> Vec<(String, String)> {
        self.index()
            .get("session")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["id"].as_str().unwrap().to_string(),
                            e["directory"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The id in `<dir>/.vibebox/session.toml`.
pub fn session_id(dir: &Path) -> String {
    let t: toml::Table = fs::read_to_string(dir.join(".vibebox/session.toml"))
        .unwrap()
        .parse()
        .unwrap();
    t["id"].as_str().unwrap().to_string()
}

/// Every file under `dir` with its contents, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((p.clone(), Vec::new()));
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Runs git in `dir` as a test author, ignoring the host's global config;
/// panics when it fails; returns what it printed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.test")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.test")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
