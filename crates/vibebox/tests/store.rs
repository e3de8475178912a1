//! End-to-end tests of `vibebox save`, `saves` and `restore`: the built
//! binary, a real git, a local store — and a real S3 server (SeaweedFS) on
//! 127.0.0.1 when `weed` is installed (always in CI).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use common::{git, World};

/// `vibebox` with the real PATH (git is needed) and no AWS settings of the
/// machine running the tests.
fn vb(w: &World, dir: &Path) -> assert_cmd::Command {
    let mut c = w.vibebox(dir);
    c.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("AWS_") || k.starts_with("VIBEBOX_STORE") || k.starts_with("GIT_") {
            c.env_remove(k);
        }
    }
    c
}

/// `vibebox save ARGS` in `dir`, started in the background (for kills and races).
fn spawn_save(w: &World, dir: &Path, args: &[&str]) -> std::process::Child {
    StdCommand::new(assert_cmd::cargo::cargo_bin("vibebox"))
        .current_dir(dir)
        .env("HOME", w.home())
        .env("VIBEBOX_HOME", w.vibebox_home())
        .arg("save")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Every file under `dir` but `.git/` and `.vibebox/`: kind, mode and bytes
/// (a symlink's target).
fn files(dir: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            if rel == ".git" || rel == ".vibebox" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o111;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, ('l', 0, t.to_string_lossy().as_bytes().to_vec()));
            } else if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn saves(w: &World, dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = vb(w, dir)
        .args(["saves", "--json"])
        .args(extra)
        .assert()
        .success();
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.get_output().stdout).unwrap()
}

fn stderr(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stderr).to_string()
}

fn stdout(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

/// A git project with a commit, staged, unstaged, untracked, ignored, CRLF,
/// executable, symlinked and "secret" files.
fn git_project(w: &World, name: &str) -> PathBuf {
    let p = w.project(name);
    git(&p, &["init", "-q", "-b", "main", "."]);
    fs::write(p.join(".gitattributes"), "* text=auto\n").unwrap();
    fs::write(p.join(".gitignore"), "build/\n*.log\n").unwrap();
    fs::write(p.join("crlf.txt"), "a\r\nb\r\n").unwrap();
    fs::write(p.join("tracked.txt"), "one\n").unwrap();
    fs::write(p.join("gone.txt"), "deleted later\n").unwrap();
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "first"]);
    fs::write(p.join("tracked.txt"), "one\ntwo (staged)\n").unwrap();
    git(&p, &["add", "tracked.txt"]);
    fs::write(
        p.join("tracked.txt"),
        "one\ntwo (staged)\nthree (unstaged)\n",
    )
    .unwrap();
    fs::remove_file(p.join("gone.txt")).unwrap();
    fs::create_dir_all(p.join("src/deep")).unwrap();
    fs::write(p.join("src/deep/new.rs"), "fn main() {}\n").unwrap();
    fs::write(p.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(p.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("tracked.txt", p.join("link")).unwrap();
    fs::create_dir_all(p.join("build")).unwrap();
    fs::write(p.join("build/out.bin"), "ignored").unwrap();
    fs::write(p.join("debug.log"), "ignored").unwrap();
    fs::write(p.join(".env"), "TOKEN=secret\n").unwrap();
    p
}

/// What `git status` and friends say about a repository, for comparisons.
fn repo_state(dir: &Path) -> (String, String, String, String) {
    (
        git(dir, &["status", "--porcelain=v1", "--untracked-files=all"]),
        git(dir, &["rev-parse", "HEAD"]),
        git(dir, &["symbolic-ref", "HEAD"]),
        git(dir, &["diff", "--cached"]),
    )
}

#[test]
fn a_git_project_round_trips_byte_for_byte_and_its_repository_is_untouched() {
    let w = World::new();
    let p = git_project(&w, "proj");
    let before_files = files(&p);
    let before_repo = repo_state(&p);
    let before_refs = git(&p, &["for-each-ref"]);
    let before_index = fs::read(p.join(".git/index")).unwrap();

    let a = vb(&w, &p)
        .args(["save", "-m", "first save"])
        .assert()
        .success();
    assert!(stdout(&a).contains("full"), "{}", stdout(&a));
    // Looks like a secret, not ignored: warned about before the upload.
    let err = stderr(&a);
    let warn = err.find(".env").expect(&err);
    assert!(warn < err.find("uploading").unwrap(), "{err}");

    // The person's repository: same status, HEAD, branch, index bytes, refs.
    assert_eq!(repo_state(&p), before_repo);
    assert_eq!(git(&p, &["for-each-ref"]), before_refs);
    assert_eq!(fs::read(p.join(".git/index")).unwrap(), before_index);
    assert_eq!(files(&p), before_files);

    // A change, a second save: incremental.
    fs::write(p.join("src/deep/new.rs"), "fn main() { changed() }\n").unwrap();
    let a = vb(&w, &p).args(["save", "-m", "second"]).assert().success();
    assert!(stdout(&a).contains("incremental on"), "{}", stdout(&a));
    // Nothing changed: nothing uploaded.
    let a = vb(&w, &p).args(["save"]).assert().success();
    assert!(stdout(&a).contains("nothing changed"), "{}", stdout(&a));

    let list = saves(&w, &p, &[]);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["message"], "first save");
    assert_eq!(list[1]["message"], "second");
    assert_eq!(list[1]["base"], list[0]["id"]);
    assert_eq!(list[0]["git"]["branch"], "main");
    assert_eq!(list[0]["directory"], p.to_str().unwrap());
    assert!(list[0]["bundle_size"].as_u64().unwrap() > 0);
    let first = list[0]["id"].as_str().unwrap().to_string();

    // The first save into a new directory: the files byte for byte (ignored
    // ones absent), the repository in the same state.
    let out = w.root().join("restored");
    vb(&w, w.root())
        .args(["restore", &first[..6], "--into", "restored"])
        .assert()
        .success();
    let got = files(&out);
    assert_eq!(
        got,
        before_files
            .iter()
            .filter(|(k, _)| !k.starts_with("build") && !k.ends_with(".log"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    );
    assert!(!out.join("build").exists() && !out.join("debug.log").exists());
    let mut want = before_repo.clone();
    // The ignored files are absent, so they do not show anywhere anyway.
    want.0 = before_repo.0.clone();
    assert_eq!(repo_state(&out), want);
    assert_eq!(git(&out, &["log", "--format=%s"]), "first\n");
    // It continues the same line of saves.
    assert_eq!(saves(&w, &out, &[]).len(), 2);
}

#[test]
fn a_git_link_planted_by_the_box_is_not_followed() {
    // The box replaces the project's `.git` with a link to another repository
    // of the person's: a save must not carry that repository's history.
    let w = World::new();
    let secret = git_project(&w, "secret-repo");
    let p = w.project("proj");
    fs::write(p.join("a.txt"), "a").unwrap();
    std::os::unix::fs::symlink(secret.join(".git"), p.join(".git")).unwrap();
    let a = vb(&w, &p).args(["save"]).assert().success();
    assert!(stderr(&a).contains("symbolic link"), "{}", stderr(&a));
    let list = saves(&w, &p, &[]);
    assert!(list[0]["git"].is_null(), "{list:?}");
    let out = w.root().join("out");
    vb(&w, &p)
        .args(["restore", "--into", out.to_str().unwrap()])
        .assert()
        .success();
    assert!(!out.join(".git").exists());
    assert_eq!(fs::read_to_string(out.join("a.txt")).unwrap(), "a");
}

#[test]
fn a_project_without_git_round_trips_and_restores_in_place_only_when_saved() {
    let w = World::new();
    let p = w.project("plain");
    fs::write(p.join("a.txt"), "a").unwrap();
    fs::create_dir_all(p.join("d")).unwrap();
    fs::write(p.join("d/b.bin"), [0u8, 1, 2, 255]).unwrap();
    let v1 = files(&p);
    vb(&w, &p).args(["save", "-m", "v1"]).assert().success();
    fs::write(p.join("a.txt"), "changed").unwrap();
    fs::write(p.join("new.txt"), "new").unwrap();

    // Unsaved changes: refused, exit 1, nothing changed.
    let a = vb(&w, &p).args(["restore"]).assert().code(1);
    assert!(stderr(&a).contains("unsaved changes"), "{}", stderr(&a));
    assert_eq!(fs::read_to_string(p.join("a.txt")).unwrap(), "changed");

    vb(&w, &p).args(["save", "-m", "v2"]).assert().success();
    let v2 = files(&p);
    let list = saves(&w, &p, &[]);
    let v1_id = list[0]["id"].as_str().unwrap();
    // Saved: restoring v1 in place brings back its files and removes new ones.
    vb(&w, &p).args(["restore", v1_id]).assert().success();
    assert_eq!(files(&p), v1);
    // ... and back to the latest (the default).
    vb(&w, &p).args(["restore"]).assert().success();
    assert_eq!(files(&p), v2);
    // --all lists saves of every project; a bad id is a clear error.
    assert_eq!(saves(&w, w.root(), &["--all"]).len(), 2);
    let a = vb(&w, &p).args(["restore", "zz"]).assert().code(1);
    assert!(stderr(&a).contains("not a save id"), "{}", stderr(&a));
    let a = vb(&w, &p).args(["restore", "0000"]).assert().code(1);
    assert!(stderr(&a).contains("no save 0000"), "{}", stderr(&a));
}

/// The bundle of save `id` in the local store of `w`.
fn bundle_of(w: &World, id: &str) -> PathBuf {
    w.vibebox_home().join(format!("store/bundles/{id}.bundle"))
}

#[test]
fn a_damaged_or_truncated_bundle_is_named_and_nothing_is_restored() {
    let w = World::new();
    let p = w.project("proj");
    fs::write(p.join("a.txt"), "a".repeat(10_000)).unwrap();
    vb(&w, &p).args(["save"]).assert().success();
    let id = saves(&w, &p, &[])[0]["id"].as_str().unwrap().to_string();
    let bundle = bundle_of(&w, &id);
    let good = fs::read(&bundle).unwrap();

    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 30] ^= 0xff;
    fs::write(&bundle, &bad).unwrap();
    let a = vb(&w, w.root())
        .args(["restore", &id, "--into", "out"])
        .assert()
        .code(1);
    assert!(stderr(&a).contains("damaged"), "{}", stderr(&a));
    assert!(!w.root().join("out").exists());

    fs::write(&bundle, &good[..good.len() / 2]).unwrap();
    let a = vb(&w, w.root())
        .args(["restore", &id, "--into", "out"])
        .assert()
        .code(1);
    assert!(stderr(&a).contains("truncated"), "{}", stderr(&a));
    assert!(!w.root().join("out").exists());
    // No temporary directory left beside it either.
    let left: Vec<_> = fs::read_dir(w.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("vibebox-restore"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    fs::write(&bundle, &good).unwrap();
    vb(&w, w.root())
        .args(["restore", &id, "--into", "out"])
        .assert()
        .success();
    assert_eq!(files(&w.root().join("out")), files(&p));
}

#[test]
fn a_save_from_the_store_that_writes_into_vibebox_state_is_refused() {
    // The store is not trusted: someone with write access to it made a save
    // whose tree has `.vibebox/session.toml`. Restoring it must write nothing.
    let w = World::new();
    let p = w.project("proj");
    fs::write(p.join("a.txt"), "a").unwrap();
    vb(&w, &p).args(["save"]).assert().success();
    let entry = saves(&w, &p, &[])[0].clone();
    let id = entry["id"].as_str().unwrap();

    let evil = w.project("evil");
    git(&evil, &["init", "-q", "."]);
    fs::create_dir_all(evil.join(".vibebox")).unwrap();
    fs::write(evil.join(".vibebox/session.toml"), "id = \"x\"\n").unwrap();
    fs::write(evil.join("a.txt"), "a").unwrap();
    git(&evil, &["add", "-f", "."]);
    git(&evil, &["commit", "-q", "-m", "evil"]);
    let commit = git(&evil, &["rev-parse", "HEAD"]).trim().to_string();
    git(
        &evil,
        &["update-ref", &format!("refs/vibebox/save/{id}"), &commit],
    );
    let bundle = bundle_of(&w, id);
    fs::remove_file(&bundle).unwrap();
    git(
        &evil,
        &[
            "bundle",
            "create",
            "-q",
            bundle.to_str().unwrap(),
            &format!("refs/vibebox/save/{id}"),
        ],
    );
    let bytes = fs::read(&bundle).unwrap();
    let mut e = entry.clone();
    e["commit"] = commit.into();
    e["bundle_size"] = (bytes.len() as u64).into();
    use sha2_digest::sha256_hex;
    e["bundle_sha256"] = sha256_hex(&bytes).into();
    let key = fs::read_dir(w.vibebox_home().join("store/saves"))
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .next()
        .unwrap()
        .path();
    fs::write(&key, serde_json::to_vec(&e).unwrap()).unwrap();

    let a = vb(&w, w.root())
        .args(["restore", id, "--into", "out"])
        .assert()
        .code(1);
    assert!(
        stderr(&a).contains(".vibebox/session.toml"),
        "{}",
        stderr(&a)
    );
    assert!(!w.root().join("out").exists());
}

/// A tiny SHA-256 through the system's `sha256sum` (no extra test crate).
mod sha2_digest {
    pub fn sha256_hex(bytes: &[u8]) -> String {
        use std::io::Write as _;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

#[test]
fn a_save_killed_at_any_point_never_replaces_the_last_good_one() {
    let w = World::new();
    let p = w.project("proj");
    for i in 0..400 {
        let d = p.join(format!("d{}", i % 20));
        fs::create_dir_all(&d).unwrap();
        let body: Vec<u8> = (0..20_000u32).map(|j| ((i * 7 + j) % 251) as u8).collect();
        fs::write(d.join(format!("f{i}.bin")), body).unwrap();
    }
    vb(&w, &p).args(["save", "-m", "good"]).assert().success();
    let good = saves(&w, &p, &[]);
    assert_eq!(good.len(), 1);
    let mut killed = 0;
    for (round, delay_ms) in [0u64, 10, 30, 60, 100, 150, 250, 400]
        .into_iter()
        .enumerate()
    {
        fs::write(p.join("changing.txt"), format!("round {round}")).unwrap();
        let mut child = spawn_save(&w, &p, &["-m", &format!("round {round}")]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // Whatever point it died at: every listed save restores whole.
        let list = saves(&w, &p, &[]);
        assert!(!list.is_empty());
        let latest = list.last().unwrap()["id"].as_str().unwrap().to_string();
        let out = w.root().join(format!("out{round}"));
        vb(&w, w.root())
            .args(["restore", &latest, "--into", out.to_str().unwrap()])
            .assert()
            .success();
        // The state of the good save, or of one of the rounds so far.
        let mut got = files(&out);
        if let Some((_, _, text)) = got.remove("changing.txt") {
            let text = String::from_utf8(text).unwrap();
            let n: usize = text.trim_start_matches("round ").parse().unwrap();
            assert!(n <= round, "round {round}: {text}");
        }
        let mut want = files(&p);
        want.remove("changing.txt");
        assert_eq!(got, want, "round {round}");
    }
    assert!(
        killed > 0,
        "no save was interrupted; the project is too small"
    );
    // And the next save, uninterrupted, works and is restorable.
    fs::write(p.join("changing.txt"), "final").unwrap();
    vb(&w, &p).args(["save", "-m", "final"]).assert().success();
    let fin = w.root().join("final");
    vb(&w, &p)
        .args(["restore", "--into", fin.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(files(&fin), files(&p));
}

#[test]
fn a_store_named_by_vibebox_toml_needs_consent() {
    let w = World::new();
    let p = w.project("proj");
    fs::create_dir_all(w.home().join(".codex")).unwrap();
    fs::create_dir_all(w.home().join(".claude")).unwrap();
    let elsewhere = w.root().join("elsewhere");
    fs::write(
        p.join("vibebox.toml"),
        format!("[store]\nurl = \"file://{}\"\n", elsewhere.display()),
    )
    .unwrap();
    // No terminal to ask: refused, nothing uploaded.
    let a = vb(&w, &p).args(["save"]).assert().code(1);
    assert!(stderr(&a).contains("not accepted"), "{}", stderr(&a));
    assert!(!elsewhere.exists());
    vb(&w, &p).args(["trust", "--yes"]).assert().success();
    vb(&w, &p).args(["save"]).assert().success();
    assert!(elsewhere.join("bundles").is_dir());
    // Changed by the box after that: asked again.
    let other = w.root().join("other");
    fs::write(
        p.join("vibebox.toml"),
        format!("[store]\nurl = \"file://{}\"\n", other.display()),
    )
    .unwrap();
    vb(&w, &p).args(["save"]).assert().code(1);
    assert!(!other.exists());
    // A bad URL is a config error with its line.
    fs::write(p.join("vibebox.toml"), "[store]\nurl = \"ftp://x\"\n").unwrap();
    let a = vb(&w, &p).args(["save"]).assert().code(1);
    assert!(stderr(&a).contains("vibebox.toml:2"), "{}", stderr(&a));
}

#[test]
fn two_copies_saving_at_once_keep_both_saves() {
    let w = World::new();
    let p = w.project("proj");
    fs::write(p.join("a.txt"), "a").unwrap();
    vb(&w, &p).args(["save"]).assert().success();
    let copy = w.root().join("copy");
    vb(&w, &p)
        .args(["restore", "--into", copy.to_str().unwrap()])
        .assert()
        .success();
    fs::write(p.join("a.txt"), "from the original").unwrap();
    fs::write(copy.join("a.txt"), "from the copy").unwrap();
    let (mut a, mut b) = (spawn_save(&w, &p, &[]), spawn_save(&w, &copy, &[]));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let list = saves(&w, &p, &[]);
    assert_eq!(list.len(), 3, "{list:?}");
    for (dir, want) in [(&p, "from the original"), (&copy, "from the copy")] {
        let id = list
            .iter()
            .find(|e| e["directory"] == dir.to_str().unwrap() && e["base"].is_string())
            .unwrap()["id"]
            .as_str()
            .unwrap();
        let out = w.root().join(format!("check-{id}"));
        vb(&w, w.root())
            .args(["restore", id, "--into", out.to_str().unwrap()])
            .assert()
            .success();
        assert_eq!(fs::read_to_string(out.join("a.txt")).unwrap(), want);
    }
}

#[test]
fn an_unreachable_store_is_a_clear_error() {
    let w = World::new();
    let p = w.project("proj");
    fs::write(p.join("a.txt"), "a").unwrap();
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = vb(&w, &p)
        .args(["save", "--store", "s3://bucket/x", "--endpoint"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "A")
        .env("AWS_SECRET_ACCESS_KEY", "S")
        .assert()
        .code(1);
    let err = stderr(&a);
    assert!(err.contains("cannot reach the store"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

/// A SeaweedFS server on 127.0.0.1 (`weed mini`), stopped on drop.
struct Seaweed {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

const S3_KEY: &str = "vibebox-test";
const S3_SECRET: &str = "vibebox-test-secret";

impl Seaweed {
    fn weed() -> Option<PathBuf> {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("vibebox/seaweedfs/weed"));
        if let Some(c) = cache.filter(|c| c.is_file()) {
            return Some(c);
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("weed"))
                .find(|p| p.is_file())
        })
    }

    fn start(dir: &Path, port: u16) -> Seaweed {
        let weed = Self::weed().expect("weed");
        fs::create_dir_all(dir.join("data")).unwrap();
        let ids = dir.join("identities.json");
        fs::write(
            &ids,
            format!(
                r#"{{"identities":[{{"name":"t","credentials":[{{"accessKey":"{S3_KEY}","secretKey":"{S3_SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.join("weed.log")).unwrap();
        let child = StdCommand::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={port}"))
            .arg(format!("-s3.config={}", ids.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Seaweed {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        // Ready when it answers S3 (a signed bucket listing).
        let deadline = Instant::now() + Duration::from_secs(120);
        while !s.curl(&["-X", "GET", &s.url("/")]) {
            assert!(
                Instant::now() < deadline,
                "weed did not answer: {}",
                fs::read_to_string(dir.join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        s
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn curl(&self, args: &[&str]) -> bool {
        StdCommand::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
            ])
            .arg(format!("{S3_KEY}:{S3_SECRET}"))
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops it as an administrator would (SIGTERM), so it keeps its data.
    fn stop(mut self) -> PathBuf {
        let _ = StdCommand::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.dir.clone()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_round_trip_credentials_missing_bucket_and_a_stopped_server() {
    if Seaweed::weed().is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "CI: weed (SeaweedFS) is missing; scripts/install-test-deps installs it"
        );
        eprintln!("skipped: weed (SeaweedFS) is not installed (scripts/install-test-deps)");
        return;
    }
    let w = World::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Seaweed::start(&w.root().join("weed"), port);
    assert!(server.curl(&["-X", "PUT", &server.url("/saves")]));
    let endpoint = server.url("");
    let s3 = |dir: &Path, secret: &str| {
        let mut c = vb(&w, dir);
        c.env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("VIBEBOX_STORE", "s3://saves/team")
            .env("VIBEBOX_STORE_ENDPOINT", &endpoint);
        c
    };
    let p = git_project(&w, "proj");
    let want = files(&p);
    let a = s3(&p, S3_SECRET)
        .args(["save", "-m", "one"])
        .assert()
        .success();
    assert!(stdout(&a).contains("s3://saves/team"), "{}", stdout(&a));
    fs::write(p.join("tracked.txt"), "changed\n").unwrap();
    let a = s3(&p, S3_SECRET)
        .args(["save", "-m", "two"])
        .assert()
        .success();
    assert!(stdout(&a).contains("incremental"), "{}", stdout(&a));
    let list: Vec<serde_json::Value> = serde_json::from_slice(
        &s3(&p, S3_SECRET)
            .args(["saves", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .unwrap();
    assert_eq!(list.len(), 2);
    let first = list[0]["id"].as_str().unwrap().to_string();
    // "Another machine": another VIBEBOX_HOME, the same store.
    let other = World::new();
    let out = other.root().join("restored");
    let mut c = vb(&other, other.root());
    c.env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .args(["restore", &first, "--into", out.to_str().unwrap()])
        .args(["--store", "s3://saves/team", "--endpoint", &endpoint])
        .assert()
        .success();
    assert_eq!(
        files(&out),
        want.into_iter()
            .filter(|(k, _)| !k.starts_with("build") && !k.ends_with(".log"))
            .collect()
    );

    // The wrong secret: refused, clearly.
    let a = s3(&p, "wrong").args(["saves"]).assert().code(1);
    assert!(
        stderr(&a).contains("refused the credentials"),
        "{}",
        stderr(&a)
    );
    // A bucket that does not exist.
    let a = s3(&p, S3_SECRET)
        .env("VIBEBOX_STORE", "s3://no-such-bucket/x")
        .args(["saves", "--all"])
        .assert()
        .code(1);
    assert!(stderr(&a).contains("does not exist"), "{}", stderr(&a));

    // The server stops during work: a clear error, and the last good save
    // stays the latest and restorable once it is back.
    fs::write(p.join("tracked.txt"), "changed again\n").unwrap();
    let dir = server.stop();
    let a = s3(&p, S3_SECRET)
        .args(["save", "-m", "three"])
        .assert()
        .code(1);
    assert!(
        stderr(&a).contains("cannot reach the store"),
        "{}",
        stderr(&a)
    );
    let server = Seaweed::start(&dir, port);
    // A restarted server may list nothing for a moment while its filer loads.
    let deadline = Instant::now() + Duration::from_secs(60);
    let list = loop {
        let out = s3(&p, S3_SECRET)
            .args(["saves", "--json"])
            .output()
            .unwrap();
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if list.len() >= 2 || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["message"], "two");
    let out2 = w.root().join("after-outage");
    s3(w.root(), S3_SECRET)
        .args([
            "restore",
            list[1]["id"].as_str().unwrap(),
            "--into",
            out2.to_str().unwrap(),
        ])
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(out2.join("tracked.txt")).unwrap(),
        "changed\n"
    );
    // And saving works again.
    s3(&p, S3_SECRET)
        .args(["save", "-m", "three"])
        .assert()
        .success();
    drop(server);
}
