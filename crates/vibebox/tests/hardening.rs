//! The host cannot be steered by a repository: consent for what a config
//! grants, `.vibebox/` hygiene, the run directory, protected paths in
//! `explain`, escaping. These drive the built binary; none boots a machine
//! (the VM tests in vm.rs cover what the box itself attempts).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::World;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cloned repository whose committed config mounts the host's home
/// read-write and widens the network.
const HOSTILE_CONFIG: &str = "[box]\nmounts = [\"~:/hosthome\"]\n[network]\nmode = \"blocklist\"\nentries = []\nhosts = { \"github.com\" = \"127.0.0.1\" }\nexpose = [2222]\n";

#[test]
fn a_cloned_config_that_grants_more_is_refused_without_a_terminal() {
    let w = World::new();
    let dir = w.project("cloned");
    fs::write(dir.join("vibebox.toml"), HOSTILE_CONFIG).unwrap();
    for args in [&["exec", "--", "true"][..], &[]] {
        let out = w.vibebox(&dir).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        for words in [
            "grants the box more than you have accepted",
            &format!(
                "+ mount {} (read-write)",
                w.home().canonicalize().unwrap().display()
            ),
            "~ network mode: allowlist -> blocklist",
            "+ hosts override github.com = 127.0.0.1",
            "+ expose guest port 2222 on the host's 127.0.0.1:2222",
            "nothing was started",
            "vibebox trust",
        ] {
            assert!(err.contains(words), "{words:?} missing in:\n{err}");
        }
    }
    // Nothing ran: no supervisor, no disk, no keys.
    assert!(!dir.join(".vibebox/disk.qcow2").exists());
    assert!(!dir.join(".vibebox/ssh").exists());
}

#[test]
fn trust_records_outside_the_project_and_asks_again_only_for_more() {
    let w = World::new();
    let dir = w.project("p");
    fs::create_dir_all(w.home().join("data")).unwrap();
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = [\"~/data:/data:read-only\"]\n[network]\nentries = [\"github.com\", \"crates.io\"]\n",
    )
    .unwrap();
    // Without a terminal, `trust` asks for --yes.
    let out = w.vibebox(&dir).arg("trust").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    let out = w.vibebox(&dir).args(["trust", "--yes"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("+ network entry crates.io"), "{text}");
    assert!(text.contains("Accepted for session"), "{text}");
    // The record lives in VIBEBOX_HOME, not in the project tree.
    let records: Vec<_> = fs::read_dir(w.vibebox_home().join("trust"))
        .unwrap()
        .collect();
    assert_eq!(records.len(), 1);
    let explain = |w: &World, dir: &std::path::Path| -> serde_json::Value {
        let out = w.vibebox(dir).args(["explain", "--json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(explain(&w, &dir)["not_accepted"], serde_json::json!([]));
    // Narrowing (fewer entries, read-only, more CPUs) needs nothing.
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\ncpu_count = 4\nmounts = []\n[network]\nentries = [\"github.com\"]\n",
    )
    .unwrap();
    assert_eq!(explain(&w, &dir)["not_accepted"], serde_json::json!([]));
    // Widening again (a read-write mount, a new entry) lists exactly that.
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = [\"~/data:/data:read-write\"]\n[network]\nentries = [\"github.com\", \"crates.io\", \"evil.test\"]\n",
    )
    .unwrap();
    let x = explain(&w, &dir);
    let pending: Vec<String> = x["not_accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(pending.len(), 2, "{pending:?}");
    assert!(
        pending[0].contains("read-only -> read-write"),
        "{pending:?}"
    );
    assert!(pending[1].contains("evil.test"), "{pending:?}");
    // The record follows a moved project (keyed by the session id).
    let moved = w.root().join("moved");
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = [\"~/data:/data:read-only\"]\n[network]\nentries = [\"crates.io\"]\n",
    )
    .unwrap();
    fs::rename(&dir, &moved).unwrap();
    assert_eq!(explain(&w, &moved)["not_accepted"], serde_json::json!([]));
    // (Any command that connects re-registers the moved project.)
    w.vibebox(&moved)
        .args(["trust", "--yes"])
        .assert()
        .success();
    // A copy is another project: it starts untrusted.
    let copy = w.root().join("copy");
    fs::create_dir_all(copy.join(".vibebox")).unwrap();
    fs::copy(moved.join("vibebox.toml"), copy.join("vibebox.toml")).unwrap();
    fs::copy(
        moved.join(".vibebox/session.toml"),
        copy.join(".vibebox/session.toml"),
    )
    .unwrap();
    let out = w
        .vibebox(&copy)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("crates.io"), "{}", stderr(&out));
}

#[test]
fn the_default_config_needs_no_consent() {
    let w = World::new();
    let dir = w.project("fresh");
    let out = w
        .vibebox(&dir)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    // It gets past consent and stops at the missing QEMU of this test PATH.
    let err = stderr(&out);
    assert!(!err.contains("accepted"), "{err}");
    assert!(err.contains("cannot start session"), "{err}");
}

#[test]
fn a_repository_that_ships_vibebox_state_with_symlinks_is_refused() {
    let w = World::new();
    let outside = w.root().join("outside");
    fs::create_dir_all(&outside).unwrap();
    for link in ["logs", "ssh"] {
        let dir = w.project(&format!("evil-{link}"));
        fs::create_dir_all(dir.join(".vibebox")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join(".vibebox").join(link)).unwrap();
        let out = w
            .vibebox(&dir)
            .args(["exec", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("a symlink to"), "{err}");
        assert!(err.contains("will not write through it"), "{err}");
    }
    // `.vibebox` itself a symlink.
    let dir = w.project("evil-state");
    std::os::unix::fs::symlink(&outside, dir.join(".vibebox")).unwrap();
    let out = w
        .vibebox(&dir)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
}

#[test]
fn a_mount_source_inside_the_project_that_is_a_symlink_is_refused() {
    let w = World::new();
    let dir = w.project("p");
    std::os::unix::fs::symlink(w.home(), dir.join("data")).unwrap();
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = [\"data:/data\"]\n",
    )
    .unwrap();
    let out = w
        .vibebox(&dir)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("key `box.mounts[0]`"), "{err}");
    assert!(
        err.contains("is inside the project but is (or goes through) a symlink"),
        "{err}"
    );
}

fn exec_with_run_dir(
    w: &World,
    dir: &std::path::Path,
    run: &std::path::Path,
) -> std::process::Output {
    w.vibebox(dir)
        .env("XDG_RUNTIME_DIR", run)
        .args(["exec", "--", "true"])
        .output()
        .unwrap()
}

#[test]
fn a_run_directory_others_can_write_is_refused() {
    let w = World::new();
    let dir = w.project("p");
    let run = w.root().join("xdg");
    fs::create_dir_all(run.join("vibebox")).unwrap();
    fs::set_permissions(run.join("vibebox"), fs::Permissions::from_mode(0o777)).unwrap();
    let out = exec_with_run_dir(&w, &dir, &run);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("can be written by other users"), "{err}");
    // One of ours that others can only read (earlier versions made it 0755)
    // is made private and used.
    fs::set_permissions(run.join("vibebox"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = exec_with_run_dir(&w, &dir, &run);
    assert!(!stderr(&out).contains("run directory"), "{}", stderr(&out));
    let mode = fs::metadata(run.join("vibebox"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // A symlink planted in its place is refused too.
    fs::remove_dir(run.join("vibebox")).unwrap();
    std::os::unix::fs::symlink(w.root(), run.join("vibebox")).unwrap();
    let out = exec_with_run_dir(&w, &dir, &run);
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn explain_lists_protected_paths_and_creates_nothing() {
    let w = World::new();
    let dir = w.project("repo");
    assert!(std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(&dir)
        .status()
        .is_ok_and(|s| s.success()));
    fs::create_dir_all(dir.join("secrets")).unwrap();
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = []\nprotect = [\"secrets\"]\n",
    )
    .unwrap();
    let out = w
        .vibebox(&dir)
        .args(["explain", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let protected = x["protected"].to_string();
    for p in [
        ".git/hooks (read-only",
        ".git/config (read-only",
        "vibebox.toml (read-only",
        "secrets (read-only",
        ".git (pinned",
    ] {
        assert!(protected.contains(p), "{p} missing in {protected}");
    }
    // explain only reports: `.git/modules` would be created by a start.
    assert!(!dir.join(".git/modules").exists());
    let text = stdout(&w.vibebox(&dir).arg("explain").output().unwrap());
    assert!(text.contains("Protected (enforced on the host"), "{text}");
}

#[test]
fn names_from_a_repository_never_reach_the_terminal_raw() {
    let w = World::new();
    let dir = w.project("p");
    // A nested repository whose directory name holds an escape sequence: its
    // protected paths are listed by explain.
    let evil = "x\u{1b}]0;pwned\u{7}";
    fs::create_dir_all(dir.join(evil).join(".git/hooks")).unwrap();
    fs::write(dir.join(evil).join(".git/config"), "").unwrap();
    fs::write(dir.join("vibebox.toml"), "[box]\nmounts = []\n").unwrap();
    let out = w.vibebox(&dir).arg("explain").output().unwrap();
    let text = stdout(&out);
    assert!(!text.contains('\u{1b}'), "raw escape in: {text:?}");
    assert!(text.contains("\\u{1b}]0;pwned"), "{text}");
}

/// At a terminal, the start shows what is new and asks; "n" starts nothing
/// and records nothing, "y" records the consent.
#[test]
fn at_a_terminal_the_start_asks() {
    let script = std::path::Path::new("/usr/bin/script");
    if !script.exists() {
        assert!(std::env::var("CI").is_err(), "CI needs `script` (bsdutils)");
        eprintln!("skipped: no /usr/bin/script");
        return;
    }
    let w = World::new();
    let dir = w.project("cloned");
    fs::write(dir.join("vibebox.toml"), HOSTILE_CONFIG).unwrap();
    let exe = assert_cmd::cargo::cargo_bin("vibebox");
    let at_terminal = |answer: &str| {
        let mut child = std::process::Command::new(script)
            .args([
                "-qec",
                &format!("{} exec -- true", exe.display()),
                "/dev/null",
            ])
            .current_dir(&dir)
            .env("HOME", w.home())
            .env("VIBEBOX_HOME", w.vibebox_home())
            .env("PATH", w.root().join("no-programs"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Answer once the question is on the screen.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        std::io::Write::write_all(&mut stdin, answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = at_terminal("n\n");
    assert!(
        text.contains("Accept these and start the box? [y/N]"),
        "{text}"
    );
    assert!(
        text.contains("you did not accept the config; nothing was started"),
        "{text}"
    );
    assert!(!w.vibebox_home().join("trust").exists());
    let text = at_terminal("y\n");
    assert!(text.contains("Accept these and start the box?"), "{text}");
    assert_eq!(
        fs::read_dir(w.vibebox_home().join("trust"))
            .unwrap()
            .count(),
        1,
        "{text}"
    );
    // Accepted: the next start asks nothing (and stops at the missing QEMU).
    let out = w
        .vibebox(&dir)
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("cannot start session"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_run_directory_of_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: only root can give a directory to another user");
        return;
    }
    let w = World::new();
    let dir = w.project("p");
    let run = w.root().join("xdg");
    fs::create_dir_all(run.join("vibebox")).unwrap();
    fs::set_permissions(run.join("vibebox"), fs::Permissions::from_mode(0o700)).unwrap();
    rustix::fs::chown(
        run.join("vibebox"),
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .unwrap();
    let out = exec_with_run_dir(&w, &dir, &run);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("belongs to another user"),
        "{}",
        stderr(&out)
    );
}

/// Output into a pipe whose reader is gone (`vibebox list | head`) ends the
/// program quietly (SIGPIPE), never with a panic.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // A socket whose other end is gone behaves like a pipe with no reader.
    let (write, read) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(read);
    let write = std::os::fd::OwnedFd::from(write);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("vibebox"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {err}", out.status);
}
