//! End-to-end tests of the foundation: the CLI, config, sessions and index,
//! driven through the built `vibebox` binary.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{session_id, snapshot, World};
use predicates::prelude::*;

const MACOS_CONFIG: &str = "[box]\ncpu_count = 2\nram_mb = 2048\ndisk_gb = 5\nmounts = [\n    \"~/.codex:~/.codex:read-write\",\n    \"~/.claude:~/.claude:read-write\",\n]\n\n[supervisor]\nauto_shutdown_ms = 20000\n";

#[test]
fn version_help_and_completions() {
    let w = World::new();
    let dir = w.project("p");
    w.vibebox(&dir)
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("vibebox "));
    for cmd in ["init", "list", "delete", "explain", "completions"] {
        w.vibebox(&dir)
            .args([cmd, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage: vibebox"));
    }
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef vibebox"),
        ("fish", "complete -c vibebox"),
    ] {
        w.vibebox(&dir)
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains(marker));
    }
    w.vibebox(&dir).arg("frobnicate").assert().code(2);
}

#[test]
fn init_writes_config_and_state_dir_and_never_overwrites() {
    let w = World::new();
    let dir = w.project("app");
    w.vibebox(&dir).arg("init").assert().success();
    let config = fs::read_to_string(dir.join("vibebox.toml")).unwrap();
    assert!(config.contains("cpu_count = 2"));
    assert!(config.contains("auto_shutdown_ms = 20000"));
    assert!(config.contains("mode = \"allowlist\""));
    assert!(config.lines().any(|l| l.starts_with('#')), "commented");
    assert_eq!(
        fs::read_to_string(dir.join(".vibebox/.gitignore")).unwrap(),
        "*\n"
    );
    let id = session_id(&dir);
    assert_eq!(w.sessions(), vec![(id, dir.display().to_string())]);
    // The default config's agent directories exist now, so it can start.
    assert!(w.home().join(".codex").is_dir() && w.home().join(".claude").is_dir());

    fs::write(dir.join("vibebox.toml"), "# mine\n").unwrap();
    let before = snapshot(w.root());
    w.vibebox(&dir)
        .arg("init")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "already exists; nothing was changed",
        ));
    assert_eq!(snapshot(w.root()), before);
}

#[test]
fn connect_creates_the_session_and_says_when_no_runtime_can_start_it() {
    let w = World::new();
    let dir = w.project("fresh");
    let sub = dir.join("src/deep");
    fs::create_dir_all(&sub).unwrap();
    w.vibebox(&dir)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "qemu-system-x86_64 is not installed",
        ))
        .stderr(predicate::str::contains("hint:"));
    assert!(dir.join("vibebox.toml").is_file());
    let id = session_id(&dir);
    // From a subdirectory, the nearest ancestor with vibebox.toml is the project.
    w.vibebox(&sub).assert().code(1);
    assert!(!sub.join(".vibebox").exists());
    assert_eq!(w.sessions(), vec![(id, dir.display().to_string())]);
}

#[test]
fn every_connect_updates_last_active() {
    let w = World::new();
    let dir = w.project("p");
    w.vibebox(&dir).arg("init").assert().success();
    let t1 = w.index()["session"][0]["last_active"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    w.vibebox(&dir).assert().code(1);
    let t2 = w.index()["session"][0]["last_active"]
        .as_str()
        .unwrap()
        .to_string();
    let (a, b): (jiff::Timestamp, jiff::Timestamp) = (t1.parse().unwrap(), t2.parse().unwrap());
    assert!(b > a, "{t1} then {t2}");
}

#[test]
fn session_ids_are_uuidv7() {
    let w = World::new();
    let dir = w.project("p");
    w.vibebox(&dir).arg("init").assert().success();
    let id = uuid::Uuid::parse_str(&session_id(&dir)).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
}

#[test]
fn twenty_parallel_starts_make_one_session() {
    let w = World::new();
    let dir = w.project("race");
    let children: Vec<_> = (0..20)
        .map(|_| {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("vibebox"))
                .current_dir(&dir)
                .env("HOME", w.home())
                .env("VIBEBOX_HOME", w.vibebox_home())
                .env("PATH", w.root().join("no-programs"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("qemu-system-x86_64 is not installed"), "{err}");
    }
    let sessions = w.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].0, session_id(&dir));
    let files: Vec<_> = fs::read_dir(dir.join(".vibebox"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        files
            .iter()
            .filter(|f| f.to_string_lossy().contains("session"))
            .count(),
        1,
        "{files:?}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("vibebox.toml")).unwrap(),
        vibebox_core::config::DEFAULT_CONFIG
    );
}

#[test]
fn killing_index_writers_never_leaves_a_broken_index() {
    let w = World::new();
    let dirs: Vec<_> = (0..8).map(|i| w.project(&format!("p{i}"))).collect();
    for d in &dirs {
        w.vibebox(d).arg("init").assert().success();
    }
    let bin = assert_cmd::cargo::cargo_bin("vibebox");
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0u64;
    while kills < 60 && Instant::now() < deadline {
        i += 1;
        let dir = &dirs[(i % 8) as usize];
        let mut child = std::process::Command::new(&bin)
            .current_dir(dir)
            .env("HOME", w.home())
            .env("VIBEBOX_HOME", w.vibebox_home())
            .env("PATH", w.root().join("no-programs"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment each time: before, during or after the write.
        std::thread::sleep(Duration::from_micros((i * 397) % 4000));
        if child.kill().is_ok() {
            kills += 1;
        }
        let _ = child.wait();
        let text = fs::read_to_string(w.index_path()).unwrap();
        let parsed: Result<toml::Table, _> = text.parse();
        assert!(parsed.is_ok(), "index broken after a kill:\n{text}");
    }
    w.vibebox(&dirs[0])
        .args(["list", "--json"])
        .assert()
        .success();
    assert_eq!(w.sessions().len(), 8);
    let leftovers: Vec<_> = fs::read_dir(w.vibebox_home())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn list_shows_sessions_in_text_and_json() {
    let w = World::new();
    let here = w.project("here");
    w.vibebox(&here)
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("no sessions yet"));
    w.vibebox(&here)
        .args(["list", "--json"])
        .assert()
        .success()
        .stdout("[]\n");
    let a = w.project("a");
    let b = w.project("b");
    w.vibebox(&a).arg("init").assert().success();
    w.vibebox(&b).arg("init").assert().success();
    w.vibebox(&here)
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("just now"))
        .stdout(predicate::str::contains("stopped"))
        .stdout(predicate::str::contains(a.display().to_string()));
    let out = w.vibebox(&here).args(["list", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["state"], "stopped");
        assert_eq!(r["clients"], 0);
        let t = r["last_active"].as_str().unwrap();
        assert!(
            t.parse::<jiff::Timestamp>().is_ok() && t.ends_with('Z'),
            "{t}"
        );
    }
    // Newest first.
    assert_eq!(rows[0]["directory"], b.display().to_string());
}

#[test]
fn reads_drop_sessions_whose_state_dir_is_gone() {
    let w = World::new();
    let a = w.project("a");
    let b = w.project("b");
    w.vibebox(&a).arg("init").assert().success();
    w.vibebox(&b).arg("init").assert().success();
    fs::remove_dir_all(a.join(".vibebox")).unwrap();
    w.vibebox(&b)
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains(a.display().to_string()).not());
    assert_eq!(w.sessions().len(), 1);
}

#[test]
fn moving_keeps_the_id_and_copying_makes_a_new_session() {
    let w = World::new();
    let orig = w.project("orig");
    w.vibebox(&orig).arg("init").assert().success();
    let id = session_id(&orig);

    let moved = w.root().join("renamed");
    fs::rename(&orig, &moved).unwrap();
    w.vibebox(&moved).assert().code(1);
    assert_eq!(session_id(&moved), id);
    assert_eq!(
        w.sessions(),
        vec![(id.clone(), moved.display().to_string())]
    );

    let copy = w.root().join("copy");
    copy_dir(&moved, &copy);
    w.vibebox(&copy)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "is a copy of the project of session",
        ));
    let copy_id = session_id(&copy);
    assert_ne!(copy_id, id);
    assert_eq!(session_id(&moved), id);
    let mut s = w.sessions();
    s.sort();
    let mut expect = vec![
        (id, moved.display().to_string()),
        (copy_id, copy.display().to_string()),
    ];
    expect.sort();
    assert_eq!(s, expect);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn delete_by_prefix_with_confirmation_rules() {
    let w = World::new();
    let a = w.project("a");
    w.vibebox(&a).arg("init").assert().success();
    let id = session_id(&a);
    // No terminal and no --yes: refuse, change nothing.
    w.vibebox(&a)
        .args(["delete", &id[..13]])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("pass --yes"));
    assert!(a.join(".vibebox").is_dir());
    w.vibebox(&a)
        .args(["delete", "ffffffff", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no session id starts with"));
    w.vibebox(&a)
        .args(["delete", &id[..13].to_uppercase(), "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("deleted session {id}")));
    assert!(!a.join(".vibebox").exists());
    assert!(
        a.join("vibebox.toml").is_file(),
        "the committed config stays"
    );
    assert!(w.sessions().is_empty());
}

#[test]
fn delete_refuses_an_ambiguous_prefix() {
    let w = World::new();
    let a = w.project("a");
    let b = w.project("b");
    w.vibebox(&a).arg("init").assert().success();
    w.vibebox(&b).arg("init").assert().success();
    // UUIDv7 ids made in the same second share their first characters.
    w.vibebox(&a)
        .args(["delete", "0", "--yes"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("names 2 sessions"));
    assert_eq!(w.sessions().len(), 2);
}

#[test]
fn explain_reports_mounts_network_storage_runtime_and_image() {
    let w = World::new();
    let dir = w.project("proj");
    fs::create_dir_all(w.home().join("data")).unwrap();
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = [\"~/data:data\", \"~/nope:/opt/nope:read-write\"]\n[network]\nmode = \"blocklist\"\nentries = [\"Evil.COM.\", \"10.0.0.0/8\"]\nauto_expose = false\n",
    )
    .unwrap();
    let out = w
        .vibebox(&dir)
        .args(["explain", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = x["mounts"].as_array().unwrap();
    assert_eq!(m[0]["guest"], "/home/vibecoder/proj");
    assert_eq!(m[0]["mode"], "read-write");
    assert_eq!(m[0]["host"], dir.display().to_string());
    assert_eq!(m[1]["guest"], "/home/vibecoder/data");
    // A two-part mount is read-write, as in the macOS vibebox and `docker -v`.
    assert_eq!(m[1]["mode"], "read-write");
    assert_eq!(m[1]["host_exists"], true);
    assert_eq!(m[2]["host_exists"], false);
    assert_eq!(x["network"]["mode"], "blocklist");
    assert_eq!(
        x["network"]["entries"],
        serde_json::json!(["evil.com", "10.0.0.0/8"])
    );
    assert_eq!(x["network"]["auto_expose"], false);
    assert_eq!(x["storage"]["config"], "vibebox.toml");
    assert_eq!(x["storage"]["state_dir"], ".vibebox/");
    assert_eq!(x["storage"]["disk"], ".vibebox/disk.qcow2");
    assert_eq!(x["runtime"]["requested"], "auto");
    assert_eq!(x["image"]["name"], "debian-bookworm");
    w.vibebox(&dir)
        .arg("explain")
        .assert()
        .success()
        .stdout(predicate::str::contains("(missing)"))
        .stdout(predicate::str::contains("blocklist"))
        .stdout(predicate::str::contains("no automatic port forwards"));
    // explain reads only: nothing was created.
    assert!(!dir.join(".vibebox").exists());
}

#[test]
fn macos_vibebox_config_is_accepted_unchanged() {
    let w = World::new();
    let dir = w.project("mac");
    fs::create_dir_all(w.home().join(".codex")).unwrap();
    fs::create_dir_all(w.home().join(".claude")).unwrap();
    fs::write(dir.join("vibebox.toml"), MACOS_CONFIG).unwrap();
    w.vibebox(&dir).arg("explain").assert().success();
    w.vibebox(&dir)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "qemu-system-x86_64 is not installed",
        ));
    assert_eq!(
        fs::read_to_string(dir.join("vibebox.toml")).unwrap(),
        MACOS_CONFIG
    );
    assert_eq!(w.sessions().len(), 1);
}

/// Writes `config` into a new project, runs `vibebox` there and checks it fails
/// with every `expect`ed fragment and changes nothing anywhere.
fn assert_bad_config(config: &str, expect: &[&str]) {
    let w = World::new();
    let dir = w.project("bad");
    fs::write(dir.join("vibebox.toml"), config).unwrap();
    let before = snapshot(w.root());
    for args in [&[][..], &["explain"][..]] {
        let out = w.vibebox(&dir).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        let file = format!("{}:", dir.join("vibebox.toml").display());
        assert!(err.contains(&file), "names the file:\n{err}");
        for e in expect {
            assert!(err.contains(e), "expected `{e}` in:\n{err}");
        }
        assert_eq!(snapshot(w.root()), before, "nothing changed for {args:?}");
    }
}

#[test]
fn config_syntax_error() {
    assert_bad_config(
        "[box]\ncpu_count = 2\nram_mb = = 3\n",
        &["vibebox.toml:3:", "TOML syntax error"],
    );
}

#[test]
fn config_unknown_key_suggests_nearest() {
    assert_bad_config(
        "[box]\nram_mg = 1024\n",
        &[
            ":2:1: key `box.ram_mg`: unknown key",
            "did you mean `ram_mb`?",
        ],
    );
    assert_bad_config(
        "[supervisr]\n",
        &["key `supervisr`", "did you mean `supervisor`?"],
    );
}

#[test]
fn config_wrong_type() {
    assert_bad_config(
        "[box]\n\ncpu_count = \"four\"\n",
        &[
            ":3:13: key `box.cpu_count`: expected an integer, found a string",
            "an integer from 1 to 256",
        ],
    );
    assert_bad_config(
        "[supervisor]\nauto_shutdown_ms = 1.5\n",
        &[":2:", "expected an integer, found a float"],
    );
}

#[test]
fn config_mount_with_wrong_number_of_parts() {
    assert_bad_config(
        "[box]\nmounts = [\n  \"~/a:~/a:read-write\",\n  \"~/a\",\n]\n",
        &[
            ":4:3: key `box.mounts[1]`",
            "has 2 or 3 parts",
            "host:guest",
        ],
    );
}

#[test]
fn config_mount_guest_path_escaping_home() {
    assert_bad_config(
        "[box]\nmounts = [\"/tmp:../../etc\"]\n",
        &["key `box.mounts[0]`", "contains `..`"],
    );
    assert_bad_config(
        "[box]\nmounts = [\"/tmp:/proc/x\"]\n",
        &["key `box.mounts[0]`", "reserved"],
    );
}

#[test]
fn config_mount_with_missing_host_path() {
    let w = World::new();
    let dir = w.project("p");
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = [\n  \"~/not-there:/data\",\n]\n",
    )
    .unwrap();
    let before = snapshot(w.root());
    w.vibebox(&dir)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            ":3:3: key `box.mounts[0]`: the host path",
        ))
        .stderr(predicate::str::contains("does not exist"))
        .stderr(predicate::str::contains("mkdir -p"));
    assert_eq!(snapshot(w.root()), before);
}

#[test]
fn config_invalid_network_mode_and_entry() {
    assert_bad_config(
        "[network]\nmode = \"denylist\"\n",
        &["key `network.mode`", "\"allowlist\", \"blocklist\""],
    );
    assert_bad_config(
        "[network]\nentries = [\n \"github.com\",\n \"*.*.example.com\",\n]\n",
        &[":4:2: key `network.entries[1]`", "wildcard"],
    );
}

#[test]
fn corrupt_index_is_reported_and_left_alone() {
    let w = World::new();
    let dir = w.project("p");
    w.vibebox(&dir).arg("init").assert().success();
    let mut text = fs::read_to_string(w.index_path()).unwrap();
    text = text.replace("directory = \"/", "directory = \"relative/");
    fs::write(w.index_path(), &text).unwrap();
    let before = snapshot(w.root());
    for args in [&["list"][..], &[][..], &["delete", "0", "--yes"][..]] {
        w.vibebox(&dir)
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("sessions.toml:5:"))
            .stderr(predicate::str::contains("session[0].directory"))
            .stderr(predicate::str::contains("not an absolute path"));
        assert_eq!(snapshot(w.root()), before);
    }
    fs::write(w.index_path(), "[[session]\n").unwrap();
    w.vibebox(&dir)
        .arg("list")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("sessions.toml:1:"));
}

#[test]
fn image_list_and_rm_without_images() {
    let w = World::new();
    let dir = w.project("p");
    w.vibebox(&dir)
        .args(["image", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no images yet"));
    w.vibebox(&dir)
        .args(["image", "list", "--json"])
        .assert()
        .success()
        .stdout("[]\n");
    // A half-built image is never listed.
    fs::create_dir_all(w.vibebox_home().join("images/.build-debian-bookworm-1")).unwrap();
    w.vibebox(&dir)
        .args(["image", "list", "--json"])
        .assert()
        .success()
        .stdout("[]\n");
    w.vibebox(&dir)
        .args(["image", "rm", "debian-bookworm"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not exist"));
    w.vibebox(&dir)
        .args(["image", "build", "--name", "../escape"])
        .assert()
        // A name the one rule refuses is a usage error.
        .code(2)
        .stderr(predicate::str::contains("not a valid image name"));
}

#[test]
fn logs_and_explain_show_network_decisions() {
    let w = World::new();
    let dir = w.project("p");
    w.vibebox(&dir).arg("init").assert().success();
    w.vibebox(&dir)
        .args(["logs", "--network"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("appears once the box"));
    fs::create_dir_all(dir.join(".vibebox/logs")).unwrap();
    let lines = [
        r#"{"time":"2026-11-23T09:00:00Z","kind":"dns","name":"evil.example","destination":"TYPE(A)","verdict":"deny","reason":"not allowed by the policy","bytes_up":0,"bytes_down":0}"#,
        r#"{"time":"2026-11-23T09:00:01Z","kind":"tcp","name":"github.com","destination":"198.18.0.1:443","verdict":"allow","reason":"allowed name","bytes_up":0,"bytes_down":0}"#,
    ];
    fs::write(
        dir.join(".vibebox/logs/network.log"),
        lines.join("\n") + "\n",
    )
    .unwrap();
    w.vibebox(&dir)
        .args(["logs", "--network"])
        .assert()
        .success()
        .stdout(lines.join("\n") + "\n");
    w.vibebox(&dir)
        .arg("explain")
        .assert()
        .success()
        .stdout(predicate::str::contains("Last blocked attempts:"))
        .stdout(predicate::str::contains(
            "evil.example TYPE(A) (not allowed by the policy)",
        ))
        .stdout(predicate::str::contains("198.18.0.1:443").not());
    let out = w
        .vibebox(&dir)
        .args(["explain", "--json"])
        .output()
        .unwrap();
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(x["network"]["recent_denials"].as_array().unwrap().len(), 1);
}

/// `vibebox fork` refuses, changing nothing, what it cannot fork: a project
/// without a session, a session whose box never started (the VM test covers
/// the rest).
#[test]
fn fork_refuses_what_it_cannot_fork_and_changes_nothing() {
    let w = World::new();
    let dir = w.project("app");
    let before = snapshot(w.root());
    w.vibebox(&dir)
        .args(["fork", "../copy"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has no session to fork"));
    assert_eq!(snapshot(w.root()), before);
    w.vibebox(&dir).arg("init").assert().success();
    let before = snapshot(w.root());
    w.vibebox(&dir)
        .args(["fork", "../copy"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has no disk yet"));
    assert_eq!(snapshot(w.root()), before);
}
