//! End-to-end tests that boot the real guest under TCG (or KVM where usable).
//!
//! They share one cached base image and run one at a time.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::vm::{self, eventually, processes_mentioning, Rt};

/// Runs an end-to-end test against both runtimes: `NAME::vm` boots the QEMU
/// guest, `NAME::container` runs the box with crun.
macro_rules! both_runtimes {
    ($name:ident) => {
        mod $name {
            #[test]
            fn vm() {
                super::$name(super::Rt::Vm)
            }
            #[test]
            fn container() {
                super::$name(super::Rt::Container)
            }
        }
    };
}
use common::World;

fn lock() -> std::sync::MutexGuard<'static, ()> {
    vm::SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start of an end-to-end test of `rt`: the one-at-a-time lock and a
/// world with the cached image; `None` (a skip) where `rt` cannot run here
/// (a failure under CI).
fn begin(rt: Rt) -> Option<(std::sync::MutexGuard<'static, ()>, World)> {
    let serial = lock();
    if !vm::available_for(rt) {
        return None;
    }
    Some((serial, World::with_image_for(rt)))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(dir: &std::path::Path, extra_box: &str, grace_ms: u64) {
    fs::write(
        dir.join("vibebox.toml"),
        format!("[box]\ncpu_count = 2\nram_mb = 1024\ndisk_gb = 4\nmounts = [{extra_box}]\n\n[supervisor]\nauto_shutdown_ms = {grace_ms}\n"),
    )
    .unwrap();
}

/// Runs `script` with `sh -c` in the box of `dir`; it must end by printing
/// `done`. Returns what it printed.
fn run_script(w: &World, dir: &std::path::Path, script: &str) -> String {
    let out = w
        .vm(dir)
        .args(["exec", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("done"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn session_state(w: &World, dir: &std::path::Path) -> (String, u64) {
    let list = w.list_json(dir);
    let row = &list[0];
    (
        row["state"].as_str().unwrap_or_default().to_string(),
        row["clients"].as_u64().unwrap_or_default(),
    )
}

/// `save_on_idle`: when the grace period ends, the supervisor saves what the
/// box made to the store before the box stops; the save restores elsewhere.
fn save_on_idle_saves_what_the_box_made(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("app");
    fs::write(
        dir.join("vibebox.toml"),
        "[box]\nmounts = []\n[supervisor]\nauto_shutdown_ms = 500\non_idle = \"shutdown\"\nsave_on_idle = true\n",
    )
    .unwrap();
    fs::write(dir.join("from-host.txt"), "host\n").unwrap();
    run_script(
        &w,
        &dir,
        "mkdir -p out && echo made in the box > out/result.txt && echo done",
    );
    assert!(
        eventually(Duration::from_secs(300), || session_state(&w, &dir).0
            == "stopped"),
        "the box did not stop"
    );
    let out = w.vm(&dir).args(["saves", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let list = list.as_array().cloned().unwrap_or_default();
    let log = fs::read_to_string(dir.join(".vibebox/logs/supervisor.log")).unwrap_or_default();
    assert_eq!(list.len(), 1, "{list:?}\n{log}");
    assert!(
        list[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("save_on_idle"),
        "{list:?}"
    );
    assert!(log.contains("save_on_idle: saved"), "{log}");
    let back = w.root().join("back");
    w.vm(&dir)
        .args(["restore", "--into", back.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(
        fs::read_to_string(back.join("out/result.txt")).unwrap(),
        "made in the box\n"
    );
    assert_eq!(
        fs::read_to_string(back.join("from-host.txt")).unwrap(),
        "host\n"
    );
}

both_runtimes!(save_on_idle_saves_what_the_box_made);

/// The whole life of a session: create, run commands, share with a second
/// client, shut down after the grace period, restart on the same disk, delete.
fn session_lifecycle(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("app");
    write_config(&dir, "", 8000);
    fs::write(dir.join("from-host.txt"), "hello from the host\n").unwrap();

    // A command runs in the project directory as the guest user; exit codes pass through.
    let out = w
        .vm(&dir)
        .args(["exec", "--", "sh", "-c", "pwd; id -un; hostname; cat from-host.txt; echo written > from-guest.txt; echo persistent > /var/tmp/marker; ln -s / /var/tmp/host-root"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first line of a start names the runtime and its isolation.
    let first = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.starts_with("vibebox: starting session"))
        .map(str::to_string)
        .unwrap_or_default();
    let expected = match rt {
        Rt::Vm => "in a virtual machine with its own kernel (QEMU",
        Rt::Container => "in a container that shares the host's kernel (crun",
    };
    assert!(first.contains(expected), "{first:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..4],
        [
            "/home/vibecoder/app",
            "vibecoder",
            "vibebox",
            "hello from the host"
        ]
    );
    let written = dir.join("from-guest.txt");
    assert_eq!(fs::read_to_string(&written).unwrap(), "written\n");
    let me = rustix::process::getuid().as_raw();
    assert_eq!(
        fs::metadata(&written).unwrap().uid(),
        me,
        "guest files belong to the host user"
    );
    w.vm(&dir)
        .args(["exec", "--", "sh", "-c", "exit 7"])
        .assert()
        .code(7);
    // cpu_count and ram_mb apply in the VM; the container applies them as
    // its own cgroup where the host lets it (cgroups v1 as root here), and
    // says why not elsewhere.
    let mut limit_groups = Vec::new();
    if rt == Rt::Container {
        let out = w.vm(&dir).arg("explain").output().unwrap();
        let text = stdout(&out);
        match vibebox_container::cgroup::probe() {
            Ok(placement) => {
                assert!(text.contains("cpu_count and ram_mb are applied"), "{text}");
                if let vibebox_container::cgroup::Placement::V1 { cpu, memory } = placement {
                    limit_groups = container_limits_hold(&w, &dir, &cpu, &memory);
                }
            }
            Err(why) => assert!(
                text.contains(&format!("cpu_count and ram_mb are not applied ({why})")),
                "{text}"
            ),
        }
    }
    let out = w
        .vm(&dir)
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "nproc; awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    let mut it = text.lines();
    let cpus = it.next();
    let mem: u64 = it.next().unwrap_or("0").parse().unwrap_or(0);
    if rt == Rt::Vm {
        assert_eq!(cpus, Some("2"), "{text}");
        assert!(
            (800..=1024).contains(&mem),
            "guest memory {mem} MiB for ram_mb = 1024"
        );
    }
    // The key pair is private to the user; the host key is pinned, never blindly trusted.
    let key = dir.join(".vibebox/ssh/id_ed25519");
    assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    let known = fs::read_to_string(dir.join(".vibebox/ssh/known_hosts")).unwrap();
    assert!(known.starts_with("vibebox-guest ssh-ed25519 "), "{known}");
    assert_eq!(known.lines().count(), 1);

    // `vibebox ssh-config` gives a Host block a plain ssh client can use.
    let block = w.vm(&dir).arg("ssh-config").output().unwrap();
    assert!(block.status.success());
    let config_file = w.root().join("ssh_config");
    fs::write(&config_file, &block.stdout).unwrap();
    let out = Command::new("ssh")
        .args(["-F"])
        .arg(&config_file)
        .args(["-o", "BatchMode=yes", "vibebox-app", "hostname"])
        .env("HOME", w.home())
        .env("PATH", vm::test_path())
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "vibebox\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Five clients attach to the same machine: the refcount shows them.
    let mut clients: Vec<std::process::Child> = (0..5)
        .map(|_| {
            Command::new(assert_cmd::cargo::cargo_bin("vibebox"))
                .args(["exec", "--", "sleep", "300"])
                .current_dir(&dir)
                .env("HOME", w.home())
                .env("VIBEBOX_HOME", w.vibebox_home())
                .env("PATH", vm::test_path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || session_state(&w, &dir)
            == ("running".into(), 5)),
        "five clients attached: {:?}",
        session_state(&w, &dir)
    );
    // Clients leave one by one (killed with SIGKILL: each releases its
    // reference); the machine keeps running while any is left.
    for (i, c) in clients.iter_mut().enumerate() {
        c.kill().unwrap();
        c.wait().unwrap();
        let left = 4 - i as u64;
        if left > 0 {
            assert!(
                eventually(Duration::from_secs(30), || session_state(&w, &dir)
                    == ("running".into(), left)),
                "{left} left: {:?}",
                session_state(&w, &dir)
            );
        }
    }
    // After the last client, the machine stops once the grace period is over
    // (suspended: `on_idle` defaults to suspend).
    // The container runtime cannot suspend: it powers off.
    let at_rest = match rt {
        Rt::Vm => "suspended",
        Rt::Container => "stopped",
    };
    assert!(
        eventually(Duration::from_secs(90), || session_state(&w, &dir).0
            == at_rest),
        "{:?}",
        session_state(&w, &dir)
    );
    let disk = match rt {
        Rt::Vm => dir.join(".vibebox/disk.qcow2"),
        Rt::Container => dir.join(".vibebox/container/upper/var/tmp"),
    };
    assert!(disk.exists(), "the disk stays: {}", disk.display());
    for g in &limit_groups {
        assert!(
            !g.exists(),
            "the box's cgroup goes with it: {}",
            g.display()
        );
    }
    // `list` counts the disk the session keeps (the VM's disk, the
    // container's writable layer) — without following what the box planted
    // there (a link to the host's root, below).
    let out = w.vm(&dir).args(["list", "--json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = match rt {
        Rt::Vm => "disk_bytes",
        Rt::Container => "container_bytes",
    };
    let bytes = rows[0][kept].as_u64().unwrap_or(0);
    assert!(bytes > 0 && bytes < 1 << 30, "{kept} = {bytes}: {rows}");
    if rt == Rt::Container {
        // crun makes its output fds the box root's: the log is never one of them.
        let log = fs::metadata(dir.join(".vibebox/logs/container.log")).unwrap();
        assert_eq!(log.uid(), me, "the container log stays the user's");
    }

    // The next start reuses the disk.
    let out = w
        .vm(&dir)
        .args(["exec", "--", "cat", "/var/tmp/marker"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out),
        "persistent\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The box's root plants links to a host path in its own files (in the
    // container, the upper layer on the host): deleting the session removes
    // the links, never what they point to.
    let victim = w.root().join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("keep.txt"), "keep\n").unwrap();
    run_script(
        &w,
        &dir,
        &format!(
            "sudo ln -s {v} /var/tmp/to-dir; sudo ln -s {v}/keep.txt /var/tmp/to-file; sudo mkdir -p /var/tmp/d; sudo ln -s {v} /var/tmp/d/inner; echo done",
            v = victim.display()
        ),
    );
    // delete --force stops it and removes everything.
    let id = common::session_id(&dir);
    w.vm(&dir)
        .args(["delete", &id, "--yes", "--force"])
        .assert()
        .success();
    assert!(!dir.join(".vibebox").exists());
    assert!(w.sessions().is_empty());
    assert_eq!(
        fs::read_to_string(victim.join("keep.txt")).unwrap(),
        "keep\n",
        "a link the box planted was followed"
    );
}

both_runtimes!(session_lifecycle);

/// Mounts are enforced on the host: read-only stays read-only for guest root,
/// `.vibebox/` is invisible, and links cannot reach outside the shares.
fn mounts_cannot_be_escaped_from_guest_root(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("proj");
    let ro = w.root().join("readonly-data");
    fs::create_dir_all(&ro).unwrap();
    fs::write(ro.join("file.txt"), "original\n").unwrap();
    let secret = w.root().join("host-secret.txt");
    fs::write(&secret, "TOP-SECRET-HOST-FILE\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../host-secret.txt", dir.join("rel-link")).unwrap();
    write_config(&dir, &format!("\"{}:/data:read-only\"", ro.display()), 1000);
    // A host path outside the project is a grant: accepted first.
    w.vm(&dir).args(["trust", "--yes"]).assert().success();
    // Guest root tries everything it can.
    let script = r#"
        sudo mount -o remount,rw /data 2>/dev/null
        sudo sh -c 'echo changed > /data/file.txt' 2>/dev/null && echo RO-WRITE-SUCCEEDED
        sudo touch /data/new 2>/dev/null && echo RO-CREATE-SUCCEEDED
        # In a mount namespace of its own (the VM's root may make one; the
        # container's may not): a write there must still not reach the host
        # file (checked below; after an umount it may land in the box's own
        # /data directory, which is harmless).
        sudo unshare -m sh -c 'umount /data; mount -o remount,rw /data; echo changed > /data/file.txt' 2>/dev/null
        unshare -Urm sh -c 'umount /data; echo changed > /data/file.txt' 2>/dev/null
        ls -A .vibebox 2>/dev/null | grep -q . && echo VIBEBOX-VISIBLE
        sudo cat .vibebox/ssh/id_ed25519 2>/dev/null && echo KEY-READABLE
        sudo umount .vibebox 2>/dev/null; sudo ls -A .vibebox 2>/dev/null | grep -q . && echo VIBEBOX-AFTER-UMOUNT
        cat abs-link rel-link ../proj/../host-secret.txt 2>/dev/null
        sudo cat /home/vibecoder/host-secret.txt 2>/dev/null
        echo done
    "#;
    let text = run_script(&w, &dir, script);
    for bad in [
        "RO-WRITE-SUCCEEDED",
        "RO-CREATE-SUCCEEDED",
        "VIBEBOX-VISIBLE",
        "KEY-READABLE",
        "VIBEBOX-AFTER-UMOUNT",
        "TOP-SECRET-HOST-FILE",
    ] {
        assert!(!text.contains(bad), "{bad} in:\n{text}");
    }
    assert_eq!(
        fs::read_to_string(ro.join("file.txt")).unwrap(),
        "original\n"
    );
    assert!(!ro.join("new").exists());
    w.vm(&dir).arg("stop").assert().success();
}

both_runtimes!(mounts_cannot_be_escaped_from_guest_root);

/// Kills the supervisor of `dir`'s session with SIGKILL and waits until
/// nothing of its box runs any more.
fn kill_the_supervisor_of(dir: &Path) {
    let status = supervisor_status(dir);
    let pid = status["pid"].as_u64().unwrap() as i32;
    let id = common::session_id(dir).replace('-', "");
    assert!(!processes_mentioning(&id).is_empty(), "helpers run");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || processes_mentioning(&id)
            .is_empty()),
        "left behind: {:?}",
        processes_mentioning(&id)
    );
}

/// A supervisor killed with SIGKILL leaves no QEMU or virtiofsd behind, and the
/// next `vibebox` recovers.
fn killed_supervisor_leaves_nothing_behind(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("crashy");
    write_config(&dir, "", 60_000);
    w.vm(&dir).args(["exec", "--", "true"]).assert().success();
    // Each time, the box's root first empties a file of its SSH host key
    // pair (as a box killed while it wrote one would find it): the next
    // boot makes a new pair instead of hanging on ssh-keygen's question
    // whether to overwrite it, or reporting a key it does not have.
    for file in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
        let emptied = format!(": >/etc/ssh/{file} && sync");
        w.vm(&dir)
            .args(["exec", "--", "sudo", "sh", "-c", &emptied])
            .assert()
            .success();
        kill_the_supervisor_of(&dir);
        let out = w
            .vm(&dir)
            .args(["exec", "--", "echo", "back"])
            .output()
            .unwrap();
        assert_eq!(
            stdout(&out),
            "back\n",
            "after {file} was emptied: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    w.vm(&dir).arg("stop").assert().success();
}

both_runtimes!(killed_supervisor_leaves_nothing_behind);

/// A project deleted while its box runs (even held up by a detached
/// terminal) takes its box with it: nothing of it runs on.
fn a_deleted_project_takes_its_box_with_it(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("doomed");
    write_config(&dir, "", 60_000);
    w.vm(&dir)
        .args(["run", "-d", "--name", "busy", "--", "sleep", "100000"])
        .assert()
        .success();
    let id = common::session_id(&dir).replace('-', "");
    assert!(!processes_mentioning(&id).is_empty(), "the box runs");
    fs::remove_dir_all(&dir).unwrap();
    // A new project at the same path at once, with its own session: the
    // old supervisor, stopping, must not touch what is there now.
    fs::create_dir_all(&dir).unwrap();
    write_config(&dir, "", 60_000);
    w.vm(&dir)
        .args(["run", "-d", "--name", "again", "--", "sleep", "100000"])
        .assert()
        .success();
    let new_id = common::session_id(&dir).replace('-', "");
    assert_ne!(new_id, id);
    assert!(
        eventually(Duration::from_secs(60), || processes_mentioning(&id)
            .is_empty()),
        "left behind: {:?}",
        processes_mentioning(&id)
    );
    assert!(
        dir.join(".vibebox/supervisor.sock").exists(),
        "the old supervisor removed the new session's socket"
    );
    let out = w.vm(&dir).args(["exec", "--", "true"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("starting session"),
        "the new session was started again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !processes_mentioning(&new_id).is_empty(),
        "the new box runs"
    );
}

both_runtimes!(a_deleted_project_takes_its_box_with_it);

/// `vibebox` opens a login shell in the project directory (a real PTY when the
/// host has a terminal), with the `:` commands; `:new` from inside the box
/// deletes nothing without a confirmation at the host terminal.
fn shell_and_box_commands(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("shelly");
    write_config(&dir, "", 1000);
    // Without a host terminal the shell reads its commands from stdin.
    let out = w
        .vm(&dir)
        .write_stdin("pwd\n:help\n:explain\necho inside-$((40+2))\nexit 3\n")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/home/vibecoder/shelly"), "{text}");
    assert!(text.contains(":new"), "help lists the commands: {text}");
    assert!(text.contains("Mounts (host -> guest)"), "explain: {text}");
    assert!(text.contains("inside-42"), "{text}");
    // A PTY when the host has one: `script` gives vibebox a terminal.
    let out = Command::new("script")
        .args([
            "-qec",
            &format!(
                "{} exec -- true; {}",
                assert_cmd::cargo::cargo_bin("vibebox").display(),
                assert_cmd::cargo::cargo_bin("vibebox").display()
            ),
            "/dev/null",
        ])
        .current_dir(&dir)
        .env("HOME", w.home())
        .env("VIBEBOX_HOME", w.vibebox_home())
        .env("PATH", vm::test_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            let mut stdin = c.stdin.take().unwrap();
            // Type once the interactive client has attached (after `exec` ran).
            eventually(Duration::from_secs(120), || {
                std::thread::sleep(Duration::from_millis(300));
                session_state(&w, &dir) == ("running".into(), 1)
            });
            std::thread::sleep(Duration::from_secs(2));
            stdin.write_all(b"tty; echo TERM=$TERM; exit\n")?;
            drop(stdin);
            c.wait_with_output()
        })
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("/dev/pts/"), "a PTY in the box: {text}");
    // `:new` without a host terminal: refused, nothing deleted.
    let id = common::session_id(&dir);
    let out = w.vm(&dir).write_stdin(":new\n").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was deleted"));
    assert_eq!(common::session_id(&dir), id);
    w.vm(&dir).arg("stop").assert().success();
}

both_runtimes!(shell_and_box_commands);

/// Whether `curl` in the box of `dir` reaches the stand-in server on `port`
/// by `name` (within a minute).
fn reaches_stand_in(w: &World, dir: &std::path::Path, name: &str, port: u16) -> bool {
    let out = w
        .vm(dir)
        .args(["exec", "--", "curl", "-s", "--max-time", "60"])
        .arg(format!("http://{name}:{port}/"))
        .output()
        .unwrap();
    stdout(&out).contains("REACHED-THE-STAND-IN-SERVER")
}

/// A stand-in internet server on 127.0.0.1 that records what reaches it.
fn recording_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(50) {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let body = "REACHED-THE-STAND-IN-SERVER";
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, seen)
}

/// Egress follows the policy, enforced on the host: allowed names work for
/// programs that ignore proxies; every escape attempt fails and is logged.
fn network_policy_is_enforced_on_the_host(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let (port, seen) = recording_server();
    let expose_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A server-first stand-in (like SMTP): speaks first, then echoes one line.
    let banner = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let banner_port = banner.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in banner.incoming().take(5) {
            let Ok(mut c) = c else { continue };
            let _ = c.write_all(b"220 allowed.test ready\r\n");
            let mut buf = [0u8; 256];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    let dir = w.project("net");
    // A TLS stand-in server for the allowed name (self-signed, on loopback).
    let tls_dir = w.root().join("tls");
    fs::create_dir_all(&tls_dir).unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=allowed.test",
        ])
        .arg("-keyout")
        .arg(tls_dir.join("key.pem"))
        .arg("-out")
        .arg(tls_dir.join("cert.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A git server (git daemon) for `git ls-remote`, also on loopback.
    let repo = w.root().join("git/demo.git");
    fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str], dir: &std::path::Path| {
        let o = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["init", "-q", "--bare"], &repo);
    let work = w.root().join("git/work");
    fs::create_dir_all(&work).unwrap();
    git(&["init", "-q"], &work);
    git(
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        &work,
    );
    git(
        &["push", "-q", repo.to_str().unwrap(), "HEAD:refs/heads/main"],
        &work,
    );
    let git_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut git_daemon = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={git_port}"))
        .arg(format!("--base-path={}", w.root().join("git").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon runs");
    let mut tls_server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{tls_port}"))
        .arg("-cert")
        .arg(tls_dir.join("cert.pem"))
        .arg("-key")
        .arg(tls_dir.join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server runs");
    fs::write(
        dir.join("vibebox.toml"),
        format!("[box]\nram_mb = 1024\nmounts = []\n[supervisor]\nauto_shutdown_ms = 60000\n[network]\nmode = \"allowlist\"\nentries = [\"allowed.test\", \"localhost\"]\nhosts = {{ \"allowed.test\" = \"127.0.0.1\", \"blocked.test\" = \"127.0.0.1\" }}\nexpose = [\"{expose_port}:8000\"]\n"),
    )
    .unwrap();
    // hosts overrides, extra entries and exposed ports are grants.
    w.vm(&dir).args(["trust", "--yes"]).assert().success();
    let script = format!(
        r#"
        P={port}
        (setsid python3 -m http.server 8000 >/dev/null 2>&1 &)
        c() {{ curl --noproxy '*' -s -m 8 "$@"; }}
        echo "allowed-http: $(c http://allowed.test:$P/)"
        echo "allowed-https: $(c -k -o /dev/null -w '%{{http_code}}' https://allowed.test:{tls_port}/)"
        echo "allowed-git: $(git ls-remote git://allowed.test:{git_port}/demo.git 2>&1 | grep -c refs/heads/main)"
        echo "server-first: $(python3 -c "
import socket; s = socket.create_connection(('allowed.test', {banner_port}), timeout=8)
banner = s.recv(100).decode().strip(); s.sendall(b'HELO guest\r\n')
print(banner, '|', s.recv(100).decode().strip())" 2>&1 | tail -1)"
        # Fail closed: bytes the engine cannot classify, a slow head naming
        # another host, and a smuggled request pipelined behind a good one.
        echo "unrecognised-tcp: $(python3 -c "
import socket; s = socket.create_connection(('allowed.test', $P), timeout=8)
s.sendall(b'PLAIN-TCP\r\n\r\n'); print('ANSWER', s.recv(100)[:15])" 2>&1 | tail -1)"
        echo "slow-head: $(python3 -c "
import socket, time; s = socket.create_connection(('allowed.test', $P), timeout=20)
s.sendall(b'GET /slow HTTP/1.1\r\nHost: evil.test\r\nX-Pad: '); time.sleep(2)
print('ANSWER', s.recv(100)[:15])" 2>&1 | tail -1)"
        echo "pipelined: $(python3 -c "
import socket; s = socket.create_connection(('allowed.test', $P), timeout=8)
s.sendall(b'GET /a HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET /b HTTP/1.1\r\nHost: evil.test\r\n\r\n')
print('ANSWER', s.recv(100)[:15])" 2>&1 | tail -1)"
        echo "blocked-name: $(c http://blocked.test:$P/ || echo refused-$?)"
        echo "raw-ip: $(c http://192.0.2.1:$P/ || echo refused-$?)"
        echo "engine-ip: $(c http://10.0.3.2:$P/ || echo refused-$?)"
        echo "qemu-host-alias: $(c http://10.0.2.2:$P/ || echo refused-$?)"
        echo "ipv6: $(c -6 http://[2001:db8::1]:$P/ || echo refused-$?)"
        echo "host-smuggling: $(c -H 'Host: evil.test' http://allowed.test:$P/ || echo refused-$?)"
        echo "sni-mismatch: $(c -k --connect-to evil.test:443:allowed.test:$P https://evil.test/ || echo refused-$?)"
        # `localhost` is allowed, and the host resolves it to its own loopback:
        # the engine must refuse to connect there (DNS rebinding protection).
        rebind_ip=$(python3 -c "
import socket, struct
q = struct.pack('>HHHHHH', 2, 0x100, 1, 0, 0, 0) + b'\x09localhost\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, ('10.0.3.2', 53)); r = s.recv(512); print('.'.join(str(b) for b in r[-4:]))")
        echo "rebinding: $rebind_ip $(c -H 'Host: localhost' http://$rebind_ip:$P/ || echo refused-$?)"
        echo "tunnel: $(python3 -c "
import socket, struct
q = struct.pack('>HHHHHH', 1, 0x100, 1, 0, 0, 0)
for label in [b'c2VjcmV0', b'tunnel', b'blocked', b'test']:
    q += bytes([len(label)]) + label
q += b'\x00' + struct.pack('>HH', 16, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, ('10.0.3.2', 53)); r = s.recv(512); print('rcode', r[3] & 15)")"
        echo "other-resolver: $(python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b'\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01', ('192.0.2.53', 53))
try:
    s.recv(512); print('ANSWERED')
except Exception as e:
    print('no-answer')")"
        echo "udp-other: $(python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b'x', ('192.0.2.9', 443))
try:
    s.recv(10); print('ANSWERED')
except Exception:
    print('no-answer')")"
        "#
    );
    let out = w
        .vm(&dir)
        .args(["exec", "--", "bash", "-c", &script])
        .output()
        .unwrap();
    let text = stdout(&out);
    eprintln!("{text}");
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{k}:")))
            .unwrap_or_else(|| {
                panic!(
                    "no {k} in:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_string()
    };
    assert!(
        line("allowed-http").contains("REACHED-THE-STAND-IN-SERVER"),
        "{text}"
    );
    assert_eq!(
        line("server-first"),
        "server-first: 220 allowed.test ready | HELO guest",
        "{text}"
    );
    for k in ["unrecognised-tcp", "slow-head", "pipelined"] {
        let l = line(k);
        assert!(!l.contains("ANSWER b'HTTP"), "{k} reached the server: {l}");
        assert!(l.contains("Error") || l.contains("ANSWER b''"), "{k}: {l}");
    }
    assert_eq!(line("allowed-https"), "allowed-https: 200", "{text}");
    assert_eq!(line("allowed-git"), "allowed-git: 1", "{text}");
    let _ = git_daemon.kill();
    let _ = git_daemon.wait();
    let _ = tls_server.kill();
    let _ = tls_server.wait();
    for k in [
        "blocked-name",
        "raw-ip",
        "engine-ip",
        "qemu-host-alias",
        "ipv6",
        "host-smuggling",
        "sni-mismatch",
        "rebinding",
    ] {
        let l = line(k);
        assert!(!l.contains("REACHED"), "escape via {k}: {l}");
        assert!(l.contains("refused-"), "{k} should fail: {l}");
    }
    assert_eq!(
        line("tunnel"),
        "tunnel: rcode 3",
        "NXDOMAIN for tunnelled names"
    );
    assert_eq!(line("other-resolver"), "other-resolver: no-answer");
    assert_eq!(line("udp-other"), "udp-other: no-answer");
    // Only checked requests reached the server (the good half of the pipelined
    // pair only if it arrived in a segment of its own), never a smuggled one.
    let reached = seen.lock().unwrap().clone();
    assert!((1..=2).contains(&reached.len()), "{reached:?}");
    assert!(
        reached.iter().all(|r| !r.contains("evil.test")),
        "{reached:?}"
    );
    // Every decision is in the log, one JSON object a line.
    let log = fs::read_to_string(dir.join(".vibebox/logs/network.log")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "deny" && e["name"] == "blocked.test"),
        "{log}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "deny"
                && e["reason"].as_str().unwrap_or("").contains("evil.test")),
        "{log}"
    );
    assert!(
        events.iter().any(|e| e["verdict"] == "deny"
            && e["destination"]
                .as_str()
                .unwrap_or("")
                .starts_with("192.0.2.1:")),
        "{log}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["verdict"] == "allow" && e["name"] == "allowed.test"),
        "{log}"
    );
    // An exposed guest port is reachable from the host's loopback, through the engine.
    let reached = eventually(Duration::from_secs(60), || {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", expose_port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut got = String::new();
        let _ = c.read_to_string(&mut got);
        got.starts_with("HTTP/1.0 200")
    });
    assert!(
        reached,
        "the exposed guest port answered on 127.0.0.1:{expose_port}"
    );
    w.vm(&dir).arg("stop").assert().success();
}

both_runtimes!(network_policy_is_enforced_on_the_host);

/// Guest root against the files the host runs or trusts: git hooks and
/// config, `vibebox.toml`, the agents' settings. All hold; the agent's own
/// state and `git commit` in the box keep working.
fn protected_paths_hold_against_guest_root(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("proj");
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.email=t@t", "-c", "user.name=t"])
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("git runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    git(&["init", "-q"]);
    git(&["commit", "-q", "--allow-empty", "-m", "init"]);
    // Like husky: hooks in the worktree, named by core.hooksPath.
    git(&["config", "core.hooksPath", ".husky"]);
    let claude = w.home().join(".claude");
    fs::create_dir_all(claude.join("projects")).unwrap();
    fs::write(claude.join(".credentials.json"), "CREDENTIALS\n").unwrap();
    fs::create_dir_all(w.home().join(".codex")).unwrap();
    // The default agent mounts need no consent.
    let config = "[box]\nram_mb = 1024\nmounts = [\"~/.codex:~/.codex:read-write\", \"~/.claude:~/.claude:read-write\"]\n[supervisor]\nauto_shutdown_ms = 1000\n";
    fs::write(dir.join("vibebox.toml"), config).unwrap();
    let script = r##"
        cd ~/proj
        echo work > work.txt && git add work.txt && git -c user.email=b@b -c user.name=b commit -qm work && echo COMMIT-OK
        echo '{"s":1}' > ~/.claude/projects/state.json && echo AGENT-STATE-OK
        grep -q CREDENTIALS ~/.claude/.credentials.json && echo CREDENTIALS-READABLE
        sudo sh -c 'printf "[network]\nmode = \"blocklist\"\n" >> vibebox.toml' 2>/dev/null && echo TOML-WRITABLE
        sudo mv vibebox.toml v2 2>/dev/null && echo TOML-RENAMED
        sudo rm -f vibebox.toml 2>/dev/null; test -f vibebox.toml || echo TOML-REMOVED
        sudo sh -c 'echo "#!/bin/sh" > .git/hooks/post-checkout' 2>/dev/null && echo HOOK-WRITABLE
        sudo sh -c 'printf "[core]\n\tfsmonitor = touch /tmp/pwned\n" >> .git/config' 2>/dev/null && echo GITCONFIG-WRITABLE
        sudo rm -rf .git/hooks .git/config 2>/dev/null; test -f .git/config || echo GITCONFIG-REMOVED
        sudo mv .git .git-old 2>/dev/null && echo GITDIR-RENAMED
        sudo mkdir .git/modules/evil 2>/dev/null && echo NEW-MODULE
        sudo sh -c 'echo ../../evil > .git/commondir' 2>/dev/null && echo COMMONDIR-WRITABLE
        sudo sh -c 'echo "#!/bin/sh" > .husky/pre-commit' 2>/dev/null && echo HUSKY-WRITABLE
        sudo rm -f .git/commondir 2>/dev/null; test -f .git/commondir || echo COMMONDIR-REMOVED
        sudo umount .git/hooks 2>/dev/null; sudo touch .git/hooks/x 2>/dev/null && echo HOOK-AFTER-UMOUNT
        sudo sh -c 'echo "{\"hooks\":{}}" > ~/.claude/settings.json' 2>/dev/null && echo CLAUDE-SETTINGS-WRITABLE
        sudo sh -c 'echo x > ~/.claude/settings.local.json' 2>/dev/null && echo CLAUDE-LOCAL-WRITABLE
        sudo mkdir ~/.claude/hooks/x 2>/dev/null && echo CLAUDE-HOOKS-WRITABLE
        sudo mv ~/.claude/settings.json ~/.claude/s2 2>/dev/null && echo CLAUDE-SETTINGS-RENAMED
        sudo sh -c 'echo "notify = [\"sh\"]" >> ~/.codex/config.toml' 2>/dev/null && echo CODEX-CONFIG-WRITABLE
        echo done
    "##;
    let text = run_script(&w, &dir, script);
    for good in ["COMMIT-OK", "AGENT-STATE-OK", "CREDENTIALS-READABLE"] {
        assert!(text.contains(good), "{good} missing:\n{text}");
    }
    for bad in [
        "TOML-WRITABLE",
        "TOML-RENAMED",
        "TOML-REMOVED",
        "HOOK-WRITABLE",
        "GITCONFIG-WRITABLE",
        "GITCONFIG-REMOVED",
        "GITDIR-RENAMED",
        "NEW-MODULE",
        "COMMONDIR-WRITABLE",
        "HUSKY-WRITABLE",
        "COMMONDIR-REMOVED",
        "HOOK-AFTER-UMOUNT",
        "CLAUDE-SETTINGS-WRITABLE",
        "CLAUDE-LOCAL-WRITABLE",
        "CLAUDE-HOOKS-WRITABLE",
        "CLAUDE-SETTINGS-RENAMED",
        "CODEX-CONFIG-WRITABLE",
    ] {
        assert!(!text.contains(bad), "{bad} in:\n{text}");
    }
    // On the host: the commit is there, nothing the host runs changed.
    assert!(git(&["log", "--oneline"]).contains("work"));
    assert_eq!(
        fs::read_to_string(dir.join(".git/commondir")).unwrap(),
        ".\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("vibebox.toml")).unwrap(),
        config
    );
    assert!(!fs::read_to_string(dir.join(".git/config"))
        .unwrap()
        .contains("fsmonitor"));
    assert_eq!(
        fs::read_dir(dir.join(".git/hooks"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() == "post-checkout")
            .count(),
        0
    );
    assert_eq!(
        fs::read_to_string(claude.join("settings.json")).unwrap(),
        "{}\n"
    );
    assert_eq!(fs::read_dir(claude.join("hooks")).unwrap().count(), 0);
    assert_eq!(
        fs::read_to_string(w.home().join(".codex/config.toml")).unwrap(),
        ""
    );
    assert!(claude.join("projects/state.json").is_file());
    w.vm(&dir).arg("stop").assert().success();
}

both_runtimes!(protected_paths_hold_against_guest_root);

/// 20 clients starting one stopped session at once, then 50 on the running
/// box: every one succeeds (one shared SSH connection, not 50 handshakes).
fn many_clients_at_once_all_succeed(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("crowd");
    write_config(&dir, "", 30_000);
    let run = |n: usize| {
        let children: Vec<_> = (0..n)
            .map(|i| {
                exec_process(&w, &dir, &["echo", &format!("client-{i}")])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("vibebox runs")
            })
            .collect();
        let mut failures = Vec::new();
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output().unwrap();
            let text = stdout(&out);
            if !out.status.success() || text.trim() != format!("client-{i}") {
                failures.push(format!(
                    "client {i}: {:?} {text:?} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        failures
    };
    let failures = run(20);
    assert!(
        failures.is_empty(),
        "on a stopped box:\n{}",
        failures.join("\n")
    );
    let failures = run(50);
    assert!(
        failures.is_empty(),
        "on a running box:\n{}",
        failures.join("\n")
    );
    w.vm(&dir).arg("stop").assert().success();
}

both_runtimes!(many_clients_at_once_all_succeed);

/// A repository that ships `.vibebox/disk.qcow2` whose header names an
/// external data file (a host file QEMU would write) is refused.
#[test]
fn a_shipped_disk_naming_an_external_data_file_is_refused() {
    let Some((_serial, w)) = begin(Rt::Vm) else {
        return;
    };
    let dir = w.project("shipped");
    write_config(&dir, "", 1000);
    let state = dir.join(".vibebox");
    fs::create_dir_all(&state).unwrap();
    let victim = w.root().join("victim.txt");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("data_file={},data_file_raw=on", victim.display()))
        .arg(state.join("disk.qcow2"))
        .arg("64M")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    fs::write(&victim, "VICTIM\n").unwrap();
    // The base it claims to be made on is the real one, so only the header
    // check stands in the way.
    let manifest: toml::Table = fs::read_to_string(
        w.vibebox_home()
            .join("images/debian-bookworm/manifest.toml"),
    )
    .unwrap()
    .parse()
    .unwrap();
    let sha = manifest["sha256"]["disk.img"].as_str().unwrap();
    fs::write(state.join("disk.base"), sha).unwrap();
    let out = w.vm(&dir).args(["exec", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("external data file"), "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "VICTIM\n");
}

/// The guest's root rewrites its own init (the instance disk is the box's):
/// on the next boot it floods the control port with an endless line. The
/// supervisor reads at most a bounded line and refuses the boot.
fn a_guest_that_floods_its_control_port_is_refused(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("flood");
    write_config(&dir, "", 1000);
    // Right where the init would report ready, it sends 1 MiB without a newline.
    let script = r#"
        sudo sed -i 's|^echo "ready $key_type $key_blob" >&3|head -c 1048576 /dev/zero \| tr "\\\\0" a >\&3; sleep 600|' /sbin/vibebox-init
        grep -q 'head -c 1048576' /sbin/vibebox-init && echo PATCHED
        echo done
    "#;
    let text = run_script(&w, &dir, script);
    assert!(text.contains("PATCHED"), "{text}");
    // Power off: the next start boots the rewritten init (a resume would not run it).
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
    let out = w.vm(&dir).args(["exec", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("control line longer than 4096 bytes"), "{err}");
    // The supervisor gave up and left nothing running.
    assert!(vm::eventually(Duration::from_secs(30), || {
        processes_mentioning(&dir.display().to_string()).is_empty()
    }));
}

both_runtimes!(a_guest_that_floods_its_control_port_is_refused);

/// `vibebox exec` without the CLI's assertions: a plain child process.
fn exec_process(w: &World, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("vibebox"));
    c.arg("exec")
        .arg("--")
        .args(args)
        .current_dir(dir)
        .env("HOME", w.home())
        .env("VIBEBOX_HOME", w.vibebox_home())
        .env("PATH", vm::test_path());
    c
}

/// The supervisor's status of the session of `dir`.
fn supervisor_status(dir: &Path) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s =
        std::os::unix::net::UnixStream::connect(dir.join(".vibebox/supervisor.sock")).unwrap();
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// `vibebox exec` runs its command through the box's exec agent (no SSH
/// connection) the way an SSH session would: as vibecoder with its groups
/// and sshd's environment, in the project, with the caller's input, output
/// and errors apart, the exit code and the signal that ended it, any amount
/// of output; a client that goes away hangs up on its command.
fn exec_runs_commands_as_an_ssh_session_would(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("agent");
    write_config(&dir, "", 30_000);
    let out = w
        .vm(&dir)
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "echo $USER:$HOME:$PATH:$LOGNAME:$SHELL; id -Gn; pwd; sudo -n true && echo root-ok",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "vibecoder:/home/vibecoder:/usr/local/bin:/usr/bin:/bin:/usr/games:vibecoder:/bin/bash"
    );
    assert!(lines[1].split(' ').any(|g| g == "sudo"), "{text}");
    assert_eq!(lines[2], "/home/vibecoder/agent");
    assert_eq!(lines[3], "root-ok");
    // Output and errors apart, the exit code.
    let out = w
        .vm(&dir)
        .args(["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).ends_with("err\n"));
    // A signal's end, as a shell reports it.
    let out = w
        .vm(&dir)
        .args(["exec", "--", "sh", "-c", "kill -TERM $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(143));
    // Input in, a lot of output out (more than any one frame).
    let mut c = exec_process(&w, &dir, &["sh", "-c", "wc -c; head -c 3000000 /dev/zero"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(&vec![b'x'; 200_000]).unwrap();
    }
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.starts_with(b"200000\n"),
        "{:?}",
        &out.stdout[..out.stdout.len().min(20)]
    );
    assert_eq!(out.stdout.len(), 7 + 3_000_000);
    // A client killed while its command runs: the command is hung up on.
    let mut c = exec_process(
        &w,
        &dir,
        &[
            "sh",
            "-c",
            "trap 'echo hung-up >/tmp/hup; exit 0' HUP; echo started; while :; do sleep 0.2; done",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "started\n");
    }
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        let out = w
            .vm(&dir)
            .args(["exec", "--", "cat", "/tmp/hup"])
            .output()
            .unwrap();
        stdout(&out) == "hung-up\n"
    }));
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
}

both_runtimes!(exec_runs_commands_as_an_ssh_session_would);

/// The exec agent is a way in only for the host: a wrong token is refused,
/// the box's user can neither read the token nor use the agent without it,
/// and an agent the box's root replaced with a hostile one gets the client
/// a clear error — no crash, no hang, nothing raw on the terminal — until
/// the next start brings the real one back.
fn the_exec_agent_holds_against_the_box(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("agent-abuse");
    write_config(&dir, "", 30_000);
    w.vm(&dir).args(["exec", "--", "true"]).assert().success();
    let port = supervisor_status(&dir)["agent_port"].as_u64().unwrap() as u16;
    // From the host, without the token.
    let refused = |token: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut req = token.as_bytes().to_vec();
        req.push(0);
        req.extend_from_slice(b"touch /tmp/pwned");
        let mut frame = vec![1u8];
        frame.extend_from_slice(&(req.len() as u32).to_be_bytes());
        frame.extend_from_slice(&req);
        s.write_all(&frame).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        answer
    };
    for token in [
        "0".repeat(64),
        String::new(),
        "A".repeat(64),
        "x".repeat(5000),
    ] {
        let answer = refused(&token);
        assert_eq!(answer.first(), Some(&19u8), "token {token:?}: {answer:?}");
    }
    // From inside, as the box's user: the token file is root's, and the agent
    // wants it.
    let script = r#"
        cat /run/vibebox/agent-token >/dev/null 2>&1 && echo READABLE
        python3 - <<'PY'
import socket
s = socket.create_connection(("127.0.0.1", 1023))
req = b"0" * 64 + b"\0touch /tmp/pwned"
s.sendall(bytes([1]) + len(req).to_bytes(4, "big") + req)
print("answer", s.recv(1)[0])
PY
        echo done
    "#;
    let text = run_script(&w, &dir, script);
    assert!(!text.contains("READABLE"), "{text}");
    assert!(text.contains("answer 19"), "{text}");
    let out = w
        .vm(&dir)
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "test -e /tmp/pwned && echo PWNED; echo done",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "done\n");
    // The box's root replaces the agent with one that answers with a frame
    // of 4 GiB, then one that refuses with terminal escapes.
    for (reply, expect) in [
        (r"b'\x10\xff\xff\xff\xff'", "malformed reply"),
        (
            r"(lambda p: b'\x13' + len(p).to_bytes(4, 'big') + p)(b'\x1b]0;pwned\x07\n')",
            "refused the command: \\x1b]0;pwned\\x07\\x0a",
        ),
    ] {
        let fake = format!(
            "import socket\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\nl.bind(('0.0.0.0', 1023))\nl.listen(16)\nwhile True:\n    c, _ = l.accept()\n    c.recv(65536)\n    c.sendall({reply})\n    c.close()\n"
        );
        fs::write(dir.join("fake-agent.py"), fake).unwrap();
        let script = "sudo pkill -f '^python3 fake-agent'; sudo setsid sh -c 'sleep 1; pkill -x vibebox-agent; exec python3 fake-agent.py' </dev/null >/dev/null 2>&1 & echo done";
        run_script(&w, &dir, script);
        let mut last = String::new();
        let replaced = eventually(Duration::from_secs(60), || {
            let out = w.vm(&dir).args(["exec", "--", "true"]).output().unwrap();
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            !out.status.success() && last.contains(expect)
        });
        assert!(replaced, "{last}");
        assert!(!last.contains('\x1b'), "{last:?}");
        // The next start brings the real agent back.
        w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
        w.vm(&dir).args(["exec", "--", "true"]).assert().success();
    }
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
}

both_runtimes!(the_exec_agent_holds_against_the_box);

/// `vibebox stop` suspends: the next start resumes the box with its processes
/// running and the files they hold open — even one the host deleted in the
/// meantime — and its clock current. `--shutdown` powers off; a machine
/// whose size changed boots afresh and says why.
#[test]
fn suspend_and_resume_keep_processes_and_open_files() {
    let Some((_serial, w)) = begin(Rt::Vm) else {
        return;
    };
    let dir = w.project("sus");
    write_config(&dir, "", 60_000);
    fs::write(dir.join("held.txt"), "kept\n").unwrap();
    fs::write(dir.join("doomed.txt"), "deleted while suspended\n").unwrap();
    let holder = r#"
        cd ~/sus
        setsid sh -c 'exec 3<held.txt 4<doomed.txt; echo $$ > /tmp/holder.pid; exec sleep 100000' </dev/null >/dev/null 2>&1 &
        sleep 1; test -s /tmp/holder.pid && echo done
    "#;
    run_script(&w, &dir, holder);
    let out = w.vm(&dir).arg("stop").output().unwrap();
    assert!(
        stdout(&out).contains("suspended the box"),
        "{}",
        stdout(&out)
    );
    assert_eq!(session_state(&w, &dir).0, "suspended");
    assert!(processes_mentioning(&dir.display().to_string()).is_empty());
    // Disk use stays visible: the instance disk and the saved state.
    let row = &w.list_json(&dir)[0];
    assert!(row["disk_bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    assert!(row["state_bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    fs::remove_file(dir.join("doomed.txt")).unwrap();
    // The guest's clock must be set again after a pause it did not see.
    std::thread::sleep(Duration::from_secs(3));
    let check = r#"
        p=$(cat /tmp/holder.pid 2>/dev/null) && kill -0 "$p" && echo "ALIVE"
        cat /proc/$p/fd/3
        echo "clock $(date +%s)"
        echo done
    "#;
    let text = run_script(&w, &dir, check);
    assert!(
        text.contains("ALIVE"),
        "the process did not survive:\n{text}"
    );
    assert!(text.contains("kept"), "the open file is gone:\n{text}");
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let guest_now: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("clock "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        (host_now - guest_now).abs() < 30,
        "guest clock {guest_now} vs host {host_now}"
    );
    // A changed machine cannot resume the old state: it boots and says why.
    w.vm(&dir).arg("stop").assert().success();
    write_config(&dir, "", 60_000);
    let changed = fs::read_to_string(dir.join("vibebox.toml"))
        .unwrap()
        .replace("ram_mb = 1024", "ram_mb = 1280");
    fs::write(dir.join("vibebox.toml"), changed).unwrap();
    let out = w
        .vm(&dir)
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "test -e /tmp/holder.pid && echo RESUMED || echo BOOTED",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "BOOTED");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("saved for another machine (cpu_count or ram_mb changed)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A saved state this host did not write (a repository can ship
    // .vibebox/) is never loaded: QEMU's loader is not a security boundary.
    w.vm(&dir).arg("stop").assert().success();
    let dev = dir.join(".vibebox/state/dev.state");
    let mut bytes = fs::read(&dev).unwrap();
    bytes.extend_from_slice(b"tampered");
    fs::write(&dev, bytes).unwrap();
    let out = w
        .vm(&dir)
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "test -e /tmp/holder.pid && echo RESUMED || echo BOOTED",
        ])
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "BOOTED");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a saved state this host did not write"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --shutdown powers off: nothing to resume.
    let out = w.vm(&dir).args(["stop", "--shutdown"]).output().unwrap();
    assert!(stdout(&out).contains("powered off"), "{}", stdout(&out));
    assert_eq!(session_state(&w, &dir).0, "stopped");
    assert!(!dir.join(".vibebox/state/dev.state").exists());
}

/// `vibebox fork`: of a running box (paused for the copy of its disk) and
/// of a stopped one, and from a snapshot. The fork is a copy of the project
/// on a new git branch with the uncommitted and untracked files, its own
/// session whose disk starts as the parent's; both run at once and a write
/// in one is absent from the other; `list` shows the lineage. Nothing
/// half-made stays after a failed fork.
#[test]
fn fork_starts_a_new_session_where_this_one_is() {
    let Some((_serial, w)) = begin(Rt::Vm) else {
        return;
    };
    let dir = w.project("app");
    write_config(&dir, "", 60_000);
    let git = |d: &std::path::Path, args: &[&str]| common::git(d, args).trim().to_string();
    git(&dir, &["init", "-q", "-b", "main"]);
    fs::write(dir.join("a.txt"), "one\n").unwrap();
    git(&dir, &["add", "a.txt"]);
    git(&dir, &["commit", "-qm", "first"]);
    fs::write(dir.join("a.txt"), "one\ntwo\n").unwrap();
    fs::write(dir.join("new.txt"), "untracked\n").unwrap();
    run_script(&w, &dir, "echo parent > ~/on-disk; echo done");
    // The box plants what a copy must not follow or hang on: links to host
    // paths, a nested project's `.vibebox` that is a link, a FIFO.
    run_script(
        &w,
        &dir,
        "ln -s /etc/passwd host-link && mkdir nested && ln -s / nested/.vibebox && mkfifo pipe && echo done",
    );
    // Processes and memory-only state the fork must carry: a worker, one
    // whose working directory is the project, a file in /dev/shm.
    run_script(
        &w,
        &dir,
        r#"setsid sh -c 'echo $$ > /dev/shm/worker.pid; exec sleep 100000' </dev/null >/dev/null 2>&1 &
           setsid sh -c 'echo $$ > /dev/shm/inproject.pid; exec sleep 100001' </dev/null >/dev/null 2>&1 &
           echo in-memory > /dev/shm/marker; sleep 1; echo done"#,
    );
    // Alive, with its working directory at `project` in the guest.
    let carried = |d: &std::path::Path, project: &str| {
        let text = run_script(
            &w,
            d,
            "cat /dev/shm/marker; kill -0 $(cat /dev/shm/worker.pid) && echo worker-alive; \
             readlink /proc/$(cat /dev/shm/inproject.pid)/cwd; pwd; ls -d ~/app 2>&1; echo done",
        );
        assert!(text.contains("in-memory\nworker-alive\n"), "{text}");
        let guest = format!("/home/vibecoder/{project}\n");
        assert!(
            text.contains(&format!("{guest}{guest}")),
            "the project's mount is at {guest}: {text}"
        );
        if project != "app" {
            assert!(
                text.contains("No such file"),
                "the parent's path is gone: {text}"
            );
        }
    };
    carried(&dir, "app");
    let parent_id = fs::read_to_string(dir.join(".vibebox/session.toml")).unwrap();
    let id_of = |d: &std::path::Path| {
        let text = fs::read_to_string(d.join(".vibebox/session.toml")).unwrap();
        toml::from_str::<toml::Value>(&text).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let fork = |args: &[&str]| w.vm(&dir).arg("fork").args(args).output().unwrap();
    let read = |d: &std::path::Path, file: &str| {
        stdout(
            &w.vm(d)
                .args(["exec", "--", "sh", "-c", &format!("cat {file} 2>&1")])
                .output()
                .unwrap(),
        )
    };

    // Of the running box.
    let out = fork(&["../running"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("paused for the copy of its disk and memory")
            && stdout(&out).contains("resumes where the parent was"),
        "{}",
        stdout(&out)
    );
    let running = w.root().join("running");
    // It resumes with the parent's processes and memory; its project mount
    // is its own directory, at its own path.
    carried(&running, "running");
    let log = fs::read_to_string(running.join(".vibebox/logs/supervisor.log")).unwrap();
    assert!(log.contains("resumed the suspended box"), "{log}");
    // Its own client key: the parent's is no longer let in.
    let block = stdout(&w.vm(&running).arg("ssh-config").output().unwrap());
    let config_file = w.root().join("fork_ssh_config");
    let parent_key = dir.join(".vibebox/ssh/id_ed25519");
    let ssh_with = |block: &str| {
        fs::write(&config_file, block).unwrap();
        Command::new("ssh")
            .args(["-F"])
            .arg(&config_file)
            .args(["-o", "BatchMode=yes", "vibebox-running", "echo in"])
            .env("HOME", w.home())
            .env("PATH", vm::test_path())
            .output()
            .unwrap()
    };
    assert_eq!(stdout(&ssh_with(&block)), "in\n", "{block}");
    let own_key = running
        .join(".vibebox/ssh/id_ed25519")
        .display()
        .to_string();
    assert!(block.contains(&own_key), "{block}");
    let with_parents = block.replace(&own_key, &parent_key.display().to_string());
    let refused = ssh_with(&with_parents);
    assert!(
        !refused.status.success() && stdout(&refused).is_empty(),
        "the parent's key reached the fork"
    );
    assert_ne!(id_of(&running), id_of(&dir));
    assert_eq!(git(&running, &["branch", "--show-current"]), "fork/running");
    assert_eq!(git(&dir, &["branch", "--show-current"]), "main");
    assert_eq!(
        fs::read_to_string(running.join("a.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(
        fs::read_to_string(running.join("new.txt")).unwrap(),
        "untracked\n"
    );
    assert!(read(&running, "~/on-disk").contains("parent"));
    for planted in ["host-link", "nested/.vibebox"] {
        let m = fs::symlink_metadata(running.join(planted)).unwrap();
        assert!(m.file_type().is_symlink(), "{planted} was followed");
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(running.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    // Both run at once; what one writes, the other does not see.
    run_script(
        &w,
        &running,
        "echo fork > ~/fork-only; echo fork > fork-file; echo done",
    );
    run_script(&w, &dir, "echo parent > ~/parent-only; echo done");
    assert!(read(&dir, "~/fork-only").contains("No such file"));
    assert!(read(&running, "~/parent-only").contains("No such file"));
    assert!(!dir.join("fork-file").exists());
    assert_eq!(
        fs::read_to_string(running.join("fork-file")).unwrap(),
        "fork\n"
    );
    // The parent goes on too.
    carried(&dir, "app");
    let list = w.list_json(&dir);
    let rows = list.as_array().unwrap();
    let row = |d: &std::path::Path| {
        rows.iter()
            .find(|r| r["directory"] == d.display().to_string())
            .unwrap_or_else(|| panic!("{d:?} not in {list}"))
            .clone()
    };
    assert_eq!(row(&dir)["state"], "running");
    assert_eq!(row(&running)["state"], "running");
    assert_eq!(row(&running)["forked_from"], id_of(&dir), "{parent_id}");
    assert!(row(&dir).get("forked_from").is_none());

    // Of the suspended box: its saved memory comes along.
    w.vm(&dir).arg("stop").assert().success();
    let out = fork(&["../suspended"]);
    assert!(
        out.status.success() && stdout(&out).contains("resumes where the parent was"),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let suspended = w.root().join("suspended");
    carried(&suspended, "suspended");
    w.vm(&suspended)
        .args(["stop", "--shutdown"])
        .assert()
        .success();
    // The parent resumes from its own state, untouched by the fork's.
    carried(&dir, "app");

    // Of the stopped box, now and from a snapshot taken before a change.
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
    w.vm(&dir)
        .args(["snapshot", "save", "before"])
        .assert()
        .success();
    run_script(&w, &dir, "echo changed > ~/on-disk; echo done");
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
    let out = fork(&["../stopped"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout(&out).contains("paused") && !stdout(&out).contains("resumes"));
    let out = fork(&["../from-snapshot", "--from", "before"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = w.root().join("stopped");
    let snap = w.root().join("from-snapshot");
    assert!(read(&stopped, "~/on-disk").contains("changed"));
    w.vm(&stopped)
        .args(["stop", "--shutdown"])
        .assert()
        .success();
    assert!(read(&snap, "~/on-disk").contains("parent"));
    w.vm(&snap).args(["stop", "--shutdown"]).assert().success();
    // The parent's snapshots stay the parent's.
    let snaps = w
        .vm(&snap)
        .args(["snapshot", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(stdout(&snaps).trim(), "[]");

    // Refusals leave nothing behind.
    for (args, says) in [
        (&["../running"][..], "exists already"),
        (&["../bad", "--from", "nosuch"][..], "no snapshot named"),
        (&["sub"][..], "inside"),
    ] {
        let out = fork(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!w.root().join("bad").exists());
    let listed = w.list_json(&dir).as_array().unwrap().len();
    assert_eq!(listed, 5, "{}", w.list_json(&dir));
    for d in [&dir, &running] {
        w.vm(d).args(["stop", "--shutdown"]).assert().success();
    }
}

/// The container runtime says plainly that it cannot fork yet.
/// Whether any file under `dir` contains `needle` (sparse files included).
fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    let out = Command::new("grep")
        .args(["-r", "-q", "-a", "-F", "--"])
        .arg(String::from_utf8_lossy(needle).as_ref())
        .arg(dir)
        .status()
        .unwrap();
    out.success()
}

/// Templates: the first new session of an image makes a template from a box
/// that never saw a project; every new session resumes it and takes its own
/// identity (mount, client key, SSH host key, machine-id, explain text).
#[test]
fn new_sessions_start_from_the_images_template() {
    let Some((_serial, w)) = begin(Rt::Vm) else {
        return;
    };
    let log = |d: &Path| fs::read_to_string(d.join(".vibebox/logs/supervisor.log")).unwrap();
    let identity = "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; pwd; ls; \
                    mount | grep -c /run/vibebox/template; \
                    i=0; while [ ! -s /run/vibebox/explain.txt ] && [ $i -lt 100 ]; do \
                    sleep 0.1; i=$((i + 1)); done; \
                    cat /run/vibebox/explain.txt; echo done";
    let first = w.project("first");
    write_config(&first, "", 60_000);
    fs::write(first.join("secret.txt"), "PROJECT-SECRET-5f1d\n").unwrap();
    let one = run_script(&w, &first, identity);
    assert!(log(&first).contains("made the template"), "{}", log(&first));
    assert!(log(&first).contains("resumed the image's template"));
    assert!(one.contains("/home/vibecoder/first\nsecret.txt\n"), "{one}");
    // Nothing of the template's guest mounts is left.
    assert!(one.contains("\n0\n"), "{one}");
    // The template holds nothing of the project that asked for it.
    let templates = w.vibebox_home().join("templates/debian-bookworm");
    let made: Vec<PathBuf> = fs::read_dir(&templates)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(!tree_contains(&made[0], b"PROJECT-SECRET-5f1d"));
    assert!(!tree_contains(&made[0], b"/home/vibecoder/first"));

    // A second new session, at a path ssh and the guest must both take
    // literally: resumes the template, boots nothing.
    let second = w.project("sec ond %\"x");
    write_config(&second, "", 60_000);
    let two = run_script(&w, &second, identity);
    assert!(
        !log(&second).contains("made the template"),
        "{}",
        log(&second)
    );
    assert!(
        !log(&second).contains("guest ready after"),
        "{}",
        log(&second)
    );
    assert!(
        two.contains("/home/vibecoder/sec ond %\"x\nvibebox.toml\n"),
        "{two}"
    );
    assert!(
        two.contains("sec ond %\"x"),
        "the explain text is the session's: {two}"
    );
    // Its own identity: another machine-id and SSH host key, the one the
    // host pinned.
    let (id1, key1) = (one.lines().next().unwrap(), one.lines().nth(1).unwrap());
    let (id2, key2) = (two.lines().next().unwrap(), two.lines().nth(1).unwrap());
    assert_eq!(id2.len(), 32, "{two}");
    assert_ne!(id1, id2);
    assert_ne!(key1, key2);
    let pinned = fs::read_to_string(second.join(".vibebox/ssh/known_hosts")).unwrap();
    let blob2 = key2.split_whitespace().nth(1).unwrap();
    assert!(pinned.contains(blob2), "{pinned} vs {key2}");
    // Both run at once; a write lands in its own project only.
    run_script(&w, &second, "echo two > made-here; echo done");
    assert!(second.join("made-here").is_file());
    assert!(!first.join("made-here").exists());
    assert!(run_script(&w, &first, "ls; echo done").contains("secret.txt"));
    // The identity is on the session's disk: a cold boot keeps it.
    w.vm(&second)
        .args(["stop", "--shutdown"])
        .assert()
        .success();
    let again = run_script(&w, &second, identity);
    assert!(log(&second).contains("guest ready after"), "booted");
    assert_eq!(again.lines().nth(1), Some(key2), "{again}");
    assert_eq!(again.lines().next(), Some(id2), "{again}");

    // Another machine shape (one more mount, read-only) has its own template.
    let data = w.root().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("d.txt"), "data\n").unwrap();
    let third = w.project("third");
    write_config(
        &third,
        &format!("\"{}:/data:read-only\"", data.display()),
        1000,
    );
    w.vm(&third).args(["trust", "--yes"]).assert().success();
    let three = run_script(&w, &third, "cat /data/d.txt; touch /data/x 2>&1; echo done");
    assert!(log(&third).contains("made the template"), "{}", log(&third));
    assert!(three.contains("data\n"), "{three}");
    assert!(
        !data.join("x").exists(),
        "the read-only mount stays read-only"
    );

    // A template whose saved devices changed is never loaded: it is made
    // again.
    let state = made[0].join(".vibebox/state/dev.state");
    let mut bytes = fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&state, bytes).unwrap();
    let fourth = w.project("fourth");
    write_config(&fourth, "", 1000);
    run_script(&w, &fourth, "echo done");
    assert!(
        log(&fourth).contains("made the template"),
        "{}",
        log(&fourth)
    );

    // `image list` counts them.
    let out = w
        .vm(&first)
        .args(["image", "list", "--json"])
        .output()
        .unwrap();
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(images[0]["templates"], 2, "{images}");
    let ids: Vec<String> = [&first, &second, &third, &fourth]
        .iter()
        .map(|d| common::session_id(d).replace('-', ""))
        .collect();
    for d in [&first, &second, &third, &fourth] {
        w.vm(d).args(["stop", "--shutdown"]).assert().success();
    }
    // No guest memory is left in tmpfs (a boot's RAM file is unlinked once
    // QEMU has it open; a template box's too).
    let shm = PathBuf::from(format!(
        "/dev/shm/vibebox-{}",
        rustix::process::getuid().as_raw()
    ));
    let left: Vec<String> = fs::read_dir(&shm)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('t') || ids.iter().any(|id| n.contains(id.as_str())))
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", shm.display());
}

#[test]
fn the_container_runtime_refuses_to_fork() {
    let Some((_serial, w)) = begin(Rt::Container) else {
        return;
    };
    let dir = w.project("boxed");
    write_config(&dir, "", 1000);
    w.vm(&dir).args(["exec", "--", "true"]).assert().success();
    w.vm(&dir)
        .args(["fork", "../copy"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("container runtime cannot fork"));
    assert!(!w.root().join("copy").exists());
}

/// Snapshots: taken of a running box (suspended to keep its memory and
/// processes) and of a box powered off (disk only); restored, they bring back
/// the disk and, when kept, the processes; listed and removed.
#[test]
fn snapshots_bring_back_disk_and_processes() {
    let Some((_serial, w)) = begin(Rt::Vm) else {
        return;
    };
    let dir = w.project("snap");
    write_config(&dir, "", 60_000);
    let setup = r#"
        echo one | sudo tee /var/lib/marker >/dev/null
        setsid sh -c 'echo $$ > /tmp/worker.pid; exec sleep 100000' </dev/null >/dev/null 2>&1 &
        sleep 1; echo done
    "#;
    run_script(&w, &dir, setup);
    let out = w
        .vm(&dir)
        .args(["snapshot", "save", "first"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("memory and processes"),
        "{}",
        stdout(&out)
    );
    // Change the disk and end the process, then take a disk-only snapshot.
    run_script(
        &w,
        &dir,
        "echo two | sudo tee /var/lib/marker >/dev/null; kill $(cat /tmp/worker.pid); echo done",
    );
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
    let out = w
        .vm(&dir)
        .args(["snapshot", "save", "second"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains("no memory"), "{}", stdout(&out));
    let list: serde_json::Value = serde_json::from_slice(
        &w.vm(&dir)
            .args(["snapshot", "list", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(list[0]["memory"], true);
    // Without a terminal, restore needs --yes.
    w.vm(&dir)
        .args(["snapshot", "restore", "first"])
        .assert()
        .code(1);
    w.vm(&dir)
        .args(["snapshot", "restore", "first", "--yes"])
        .assert()
        .success();
    let check = "cat /var/lib/marker; kill -0 $(cat /tmp/worker.pid) 2>/dev/null && echo WORKER-ALIVE; echo done";
    let text = run_script(&w, &dir, check);
    assert!(
        text.contains("one") && text.contains("WORKER-ALIVE"),
        "{text}"
    );
    w.vm(&dir)
        .args(["snapshot", "restore", "second", "--yes"])
        .assert()
        .success();
    let text = run_script(&w, &dir, check);
    assert!(
        text.contains("two") && !text.contains("WORKER-ALIVE"),
        "{text}"
    );
    // A snapshot's memory lives in .vibebox/ (a repository can ship or change
    // it): changed since it was taken, it is never loaded; only the disk is.
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
    let dev = dir.join(".vibebox/snapshots/first/dev.state");
    let mut bytes = fs::read(&dev).unwrap();
    bytes.extend_from_slice(b"tampered");
    fs::write(&dev, bytes).unwrap();
    let out = w
        .vm(&dir)
        .args(["snapshot", "restore", "first", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changed since it was taken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = run_script(&w, &dir, check);
    assert!(
        text.contains("one") && !text.contains("WORKER-ALIVE"),
        "{text}"
    );
    w.vm(&dir)
        .args(["snapshot", "rm", "first"])
        .assert()
        .success();
    w.vm(&dir)
        .args(["snapshot", "restore", "first", "--yes"])
        .assert()
        .code(1);
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
}

/// The container's upper layer lives in `.vibebox/container/`, which a
/// repository could ship: one that is a symlink (to make the box write into
/// the host's home) is refused before anything starts, and nothing is written
/// where it points.
#[test]
fn a_shipped_container_layer_that_is_a_symlink_is_refused() {
    let Some((_serial, w)) = begin(Rt::Container) else {
        return;
    };
    let dir = w.project("shipped");
    write_config(&dir, "", 1000);
    let target = w.root().join("host-dir");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(dir.join(".vibebox/container")).unwrap();
    std::os::unix::fs::symlink(&target, dir.join(".vibebox/container/upper")).unwrap();
    let out = w.vm(&dir).args(["exec", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a symlink"), "{err}");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0, "nothing written");
}

/// In the container the box's root has no CAP_SYS_ADMIN and a seccomp
/// profile: no mounts, no new namespaces, no kernel keyrings or BPF, and
/// its processes are the box's only (its own pid namespace).
#[test]
fn the_container_box_root_is_confined() {
    let Some((_serial, w)) = begin(Rt::Container) else {
        return;
    };
    let dir = w.project("confined");
    write_config(&dir, "", 1000);
    let script = r#"
        sudo mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED
        sudo unshare -U true 2>/dev/null && echo USERNS
        sudo unshare -n true 2>/dev/null && echo NETNS
        sudo python3 -c 'import ctypes; l=ctypes.CDLL(None); l.syscall.restype=ctypes.c_long; print("KEYCTL", l.syscall(250, 0, 0, 0, 0, 0))' 2>/dev/null
        sudo python3 -c 'import ctypes; l=ctypes.CDLL(None); print("BPF", l.syscall(321, 0, 0, 0))' 2>/dev/null
        grep CapEff /proc/self/status
        sudo grep CapBnd /proc/self/status
        ps -e -o comm= | sort -u | tr '\n' ' '; echo
        sudo cat /proc/1/cmdline | tr '\0' ' '; echo
        echo done
    "#;
    let text = run_script(&w, &dir, script);
    for bad in ["MOUNTED", "USERNS", "NETNS"] {
        assert!(!text.lines().any(|l| l == bad), "{bad} in:\n{text}");
    }
    assert!(text.contains("KEYCTL -1"), "{text}");
    assert!(text.contains("BPF -1"), "{text}");
    // CAP_SYS_ADMIN is bit 21: never in the bounding set.
    let bnd = text
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .unwrap();
    assert_eq!(bnd & (1 << 21), 0, "{text}");
    // No host process is visible: the box's init is PID 1.
    assert!(text.contains("/sbin/vibebox-init"), "{text}");
    assert!(
        !text.contains("cargo") && !text.contains("supervise"),
        "{text}"
    );
    w.vm(&dir).arg("stop").assert().success();
}

fn terminals(w: &World, dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = w.vm(dir).args(["ps", "--json"]).output().unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn terminal(w: &World, dir: &std::path::Path, name: &str) -> Option<serde_json::Value> {
    terminals(w, dir).into_iter().find(|t| t["name"] == name)
}

/// Detachable terminals: `run -d` starts one that outlives its client and
/// keeps the box up past its grace period; two clients attached to one see
/// the same screen; one detaches (the terminal goes on), the other sees the
/// command end and gets its exit code; `ps` tells each state; once nothing
/// runs, the box idles out.
fn detachable_terminals(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let Some(host) = vm::HostTmux::new() else {
        return;
    };
    let dir = w.project("app");
    write_config(&dir, "", 1000);
    let out = w
        .vm(&dir)
        .args(["run", "-d", "--name", "job", "--"])
        .args(["sh", "-c", "echo started > job.txt; sleep 600"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.vm(&dir)
        .args(["run", "-d", "--name", "job", "--", "true"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("already runs"));
    // No client holds the box, for several grace periods: the job does.
    std::thread::sleep(Duration::from_secs(6));
    let log = || fs::read_to_string(dir.join(".vibebox/logs/supervisor.log")).unwrap_or_default();
    assert_eq!(session_state(&w, &dir).0, "running", "{}", log());
    assert!(log().contains("a terminal in the box runs"), "{}", log());
    assert_eq!(
        fs::read_to_string(dir.join("job.txt")).unwrap(),
        "started\n"
    );
    let job = terminal(&w, &dir, "job").expect("job listed");
    assert_eq!(job["running"], true, "{job}");
    assert_eq!(job["clients"], 0, "{job}");
    assert!(
        job["command"].as_str().unwrap().contains("sleep 600"),
        "{job}"
    );

    // A terminal whose command ends keeps its exit code for `ps`.
    w.vm(&dir)
        .args(["run", "-d", "--name", "quick", "--", "sh", "-c", "exit 7"])
        .assert()
        .success();
    assert!(
        eventually(Duration::from_secs(60), || terminal(&w, &dir, "quick")
            .is_some_and(|t| t["running"] == false && t["exit_code"] == 7)),
        "{:?}",
        terminals(&w, &dir)
    );

    // Two clients on one terminal see the same screen.
    w.vm(&dir)
        .args(["run", "-d", "--name", "shell", "--", "bash", "--norc"])
        .assert()
        .success();
    host.open("c1", &w.client_script(&dir, "c1", &["attach", "shell"]));
    host.open("c2", &w.client_script(&dir, "c2", &["attach", "shell"]));
    assert!(
        eventually(Duration::from_secs(120), || terminal(&w, &dir, "shell")
            .is_some_and(|t| t["clients"] == 2)),
        "{:?}\n{}\n{}",
        terminals(&w, &dir),
        host.screen("c1"),
        host.screen("c2")
    );
    host.send("c1", &["echo marker-$((6*7))", "Enter"]);
    host.wait_for("c2", &["marker-42"]);
    // c2 detaches: the terminal goes on.
    host.send("c2", &["C-b", "d"]);
    host.wait_for("c2", &["keeps running", "CLIENT-EXIT 0"]);
    assert_eq!(terminal(&w, &dir, "shell").unwrap()["running"], true);
    // c1 ends the command: it gets the command's exit code.
    host.send("c1", &["exit 4", "Enter"]);
    host.wait_for("c1", &["CLIENT-EXIT 4"]);

    // `run` without -d attaches at once, and passes the exit code on.
    host.open(
        "c3",
        &w.client_script(
            &dir,
            "c3",
            &["run", "--", "sh", "-c", "echo ready; read x; exit 3"],
        ),
    );
    host.wait_for("c3", &["ready"]);
    host.send("c3", &["go", "Enter"]);
    host.wait_for("c3", &["CLIENT-EXIT 3"]);

    // Nothing runs any more: the box idles out (the VM suspends).
    w.vm(&dir)
        .args([
            "exec",
            "--",
            "tmux",
            "-L",
            "vibebox",
            "kill-session",
            "-t",
            "=job",
        ])
        .assert()
        .success();
    let idle = || matches!(session_state(&w, &dir).0.as_str(), "stopped" | "suspended");
    assert!(eventually(Duration::from_secs(120), idle), "{}", log());
    if session_state(&w, &dir).0 == "stopped" {
        // A powered-off box has no terminals, and `ps` does not start it.
        let out = w.vm(&dir).args(["ps"]).output().unwrap();
        assert!(stdout(&out).contains("no terminals"), "{}", stdout(&out));
        assert_eq!(session_state(&w, &dir).0, "stopped");
    }
}

both_runtimes!(detachable_terminals);

/// `ssh` through the printed (or installed) Host block, as an IDE would:
/// its ProxyCommand starts a stopped box, holds it while the connection
/// lives, and the exit code comes back; `--install` keeps the person's
/// ~/.ssh/config and adds one Include, once.
fn ssh_entry_starts_a_stopped_box(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("app");
    write_config(&dir, "", 500);
    let ssh = |config: &std::path::Path, line: &str| {
        Command::new("ssh")
            .arg("-F")
            .arg(config)
            .args(["-o", "BatchMode=yes", "vibebox-app", line])
            .env("HOME", w.home())
            .env("PATH", vm::test_path())
            .env("VIBEBOX_RUNTIME", rt.name())
            .output()
            .unwrap()
    };
    let block = w.vm(&dir).arg("ssh-config").output().unwrap();
    assert!(
        block.status.success(),
        "{}",
        String::from_utf8_lossy(&block.stderr)
    );
    assert!(
        stdout(&block).contains("ProxyCommand "),
        "{}",
        stdout(&block)
    );
    let config = w.root().join("ssh_config");
    fs::write(&config, &block.stdout).unwrap();
    assert_eq!(w.list_json(&dir).as_array().map(Vec::len), Some(0));
    // The box starts for the connection, and stays while it lives (the
    // grace is half a second; the command takes three).
    let out = ssh(&config, "sleep 3; hostname; exit 5");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "vibebox\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting session"));
    // After a stop, the same block starts it again.
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
    let out = ssh(&config, "echo again");
    assert_eq!(
        stdout(&out),
        "again\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --install: the person's config is kept, one Include comes first.
    let user_config = w.home().join(".ssh/config");
    fs::create_dir_all(user_config.parent().unwrap()).unwrap();
    fs::write(&user_config, "Host mine\n  HostName example.invalid\n").unwrap();
    for _ in 0..2 {
        w.vm(&dir)
            .args(["ssh-config", "--install"])
            .assert()
            .success();
    }
    let text = fs::read_to_string(&user_config).unwrap();
    assert_eq!(text.matches("Include ").count(), 1, "{text}");
    assert!(
        text.find("Include ").unwrap() < text.find("Host mine").unwrap(),
        "{text}"
    );
    let managed = fs::read_to_string(w.home().join(".ssh/vibebox/config")).unwrap();
    assert_eq!(
        managed.matches("Host vibebox-app\n").count(),
        1,
        "{managed}"
    );
    assert_eq!(
        fs::metadata(w.home().join(".ssh/vibebox/config"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    let out = ssh(&user_config, "echo installed");
    assert_eq!(
        stdout(&out),
        "installed\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

both_runtimes!(ssh_entry_starts_a_stopped_box);

fn ports(w: &World, dir: &std::path::Path) -> Vec<serde_json::Value> {
    let out = w.vm(dir).args(["ports", "--json"]).output().unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn port(w: &World, dir: &std::path::Path, guest: u16) -> Option<serde_json::Value> {
    ports(w, dir).into_iter().find(|p| p["guest"] == guest)
}

/// Starts `python3 -m http.server PORT` in a detached terminal of the box.
fn serve_detached(w: &World, dir: &std::path::Path, name: &str, port: u16) {
    w.vm(dir)
        .args([
            "run",
            "-d",
            "--name",
            name,
            "--",
            "python3",
            "-m",
            "http.server",
        ])
        .arg(port.to_string())
        .assert()
        .success();
}

/// A port free on the host now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP GET of `/` on the host's 127.0.0.1:`port`: the reply, or "".
fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Automatic port forwards: a server the box starts on 0.0.0.0 is reachable
/// on the same host port within seconds (another one when that is taken on
/// the host, or privileged), named in `ports` with its process, announced to
/// an attached terminal, and gone when the server stops; a server on the
/// box's loopback is listed as not forwarded; a box cannot take more than
/// 32 host ports; `auto_expose = false` forwards nothing.
fn ports_are_forwarded_automatically(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let Some(host) = vm::HostTmux::new() else {
        return;
    };
    let dir = w.project("web");
    write_config(&dir, "", 1000);
    // A terminal attached to the box hears of new ports.
    host.open("c1", &w.client_script(&dir, "c1", &[]));
    assert!(
        eventually(Duration::from_secs(180), || session_state(&w, &dir).0
            == "running"),
        "{}",
        host.screen("c1")
    );
    let p = free_port();
    serve_detached(&w, &dir, "web", p);
    assert!(
        eventually(Duration::from_secs(60), || port(&w, &dir, p)
            .is_some_and(|f| f["host"] == p)),
        "{:?}",
        ports(&w, &dir)
    );
    let f = port(&w, &dir, p).unwrap();
    assert_eq!(f["source"], "auto", "{f}");
    assert_eq!(f["process"], "python3", "{f}");
    assert!(http_get(p).contains("Directory listing"), "{}", http_get(p));
    host.wait_for(
        "c1",
        &[&format!(
            "port {p} (python3) in the box is http://127.0.0.1:{p}"
        )],
    );

    // Taken on the host, or privileged: another host port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let q = taken.local_addr().unwrap().port();
    let script = format!(
        "python3 -m http.server {q} & sudo python3 -m http.server 80 & \
         python3 -m http.server --bind 127.0.0.1 {lo} & wait",
        lo = p + 1
    );
    w.vm(&dir)
        .args(["run", "-d", "--name", "more", "--", "sh", "-c", &script])
        .assert()
        .success();
    let forwarded = |g: u16| port(&w, &dir, g).and_then(|f| f["host"].as_u64());
    assert!(
        eventually(Duration::from_secs(60), || forwarded(q).is_some()
            && forwarded(80).is_some()
            && port(&w, &dir, p + 1).is_some()),
        "{:?}",
        ports(&w, &dir)
    );
    let hq = forwarded(q).unwrap() as u16;
    assert_ne!(hq, q);
    assert!(http_get(hq).contains("Directory listing"));
    assert!(forwarded(80).unwrap() >= 1024);
    let lo = port(&w, &dir, p + 1).unwrap();
    assert!(lo["host"].is_null(), "{lo}");
    assert!(lo["note"].as_str().unwrap().contains("127.0.0.1"), "{lo}");
    drop(taken);

    // The server stops: so does its forward.
    w.vm(&dir)
        .args([
            "exec",
            "--",
            "tmux",
            "-L",
            "vibebox",
            "kill-session",
            "-t",
            "=web",
        ])
        .assert()
        .success();
    assert!(
        eventually(Duration::from_secs(60), || port(&w, &dir, p).is_none()),
        "{:?}",
        ports(&w, &dir)
    );
    assert!(http_get(p).is_empty());

    // A box that listens on 40 ports gets 32 forwarded.
    let flood = "import socket, time\nkeep = []\nfor i in range(40):\n    s = socket.socket()\n    s.bind(('0.0.0.0', 0))\n    s.listen()\n    keep.append(s)\ntime.sleep(600)\n";
    fs::write(dir.join("flood.py"), flood).unwrap();
    w.vm(&dir)
        .args(["run", "-d", "--name", "flood", "--", "python3", "flood.py"])
        .assert()
        .success();
    let auto = || {
        ports(&w, &dir)
            .iter()
            .filter(|f| f["source"] == "auto" && !f["host"].is_null())
            .count()
    };
    assert!(
        eventually(Duration::from_secs(60), || auto() == 32),
        "{}",
        auto()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(auto(), 32);
    drop(host);
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();

    // auto_expose = false: nothing is forwarded.
    let off = w.project("off");
    fs::write(
        off.join("vibebox.toml"),
        "[box]\nmounts = []\n[supervisor]\nauto_shutdown_ms = 1000\n[network]\nauto_expose = false\n",
    )
    .unwrap();
    let r = free_port();
    serve_detached(&w, &off, "web", r);
    run_script(
        &w,
        &off,
        &format!(
            "for i in $(seq 100); do ss -Hltn | grep -q :{r} && break; sleep 0.2; done; echo done"
        ),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(ports(&w, &off).is_empty(), "{:?}", ports(&w, &off));
    assert!(http_get(r).is_empty());
}

both_runtimes!(ports_are_forwarded_automatically);

/// The index follows a moved project: a running box notices at once (its
/// supervisor holds the directory open) and keeps working from the new
/// place; a stopped one is registered again by any command run there.
fn moving_a_project_keeps_its_session(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let first = w.project("first");
    write_config(&first, "", 60_000);
    run_script(&w, &first, "echo before > made.txt && echo done");
    let id = common::session_id(&first);
    let listed = |w: &World| -> Vec<(String, String, String)> {
        w.list_json(w.root())
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("id"), s("directory"), s("state"))
            })
            .collect()
    };
    // Moved while running.
    let second = w.root().join("second");
    fs::rename(&first, &second).unwrap();
    let want = (
        id.clone(),
        second.display().to_string(),
        "running".to_string(),
    );
    assert!(
        eventually(Duration::from_secs(30), || listed(&w) == vec![want.clone()]),
        "{:?}",
        listed(&w)
    );
    let log = fs::read_to_string(second.join(".vibebox/logs/supervisor.log")).unwrap();
    assert!(log.contains("the project moved"), "{log}");
    let out = run_script(
        &w,
        &second,
        "cat made.txt && echo after > made.txt && echo done",
    );
    assert!(out.contains("before"), "{out}");
    assert_eq!(
        fs::read_to_string(second.join("made.txt")).unwrap(),
        "after\n"
    );
    assert_eq!(common::session_id(&second), id);
    w.vm(&second)
        .args(["stop", "--shutdown"])
        .assert()
        .success();
    assert!(!second.join(".vibebox/supervisor.sock").exists());

    // Moved while stopped: a command run there brings the entry back.
    let third = w.root().join("third");
    fs::rename(&second, &third).unwrap();
    assert!(listed(&w).is_empty(), "{:?}", listed(&w));
    w.vm(&third).args(["ps"]).assert().success();
    let want = (
        id.clone(),
        third.display().to_string(),
        "stopped".to_string(),
    );
    assert_eq!(listed(&w), vec![want]);
    let out = run_script(&w, &third, "cat made.txt && echo done");
    assert!(out.contains("after"), "{out}");
    assert_eq!(common::session_id(&third), id);
}

both_runtimes!(moving_a_project_keeps_its_session);

/// `vibebox reload` changes a running box's policy without a restart: a
/// widening needs consent (refused without a terminal, nothing changed),
/// then applies; a connection the new policy refuses is closed; a narrowing
/// applies at once.
fn reload_changes_the_policy_of_a_running_box(rt: Rt) {
    use std::io::{Read, Write};
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let (web, _seen) = recording_server();
    // A server that greets, then holds the connection open.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hold_port = holder.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in holder.incoming().take(10) {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let _ = c.write_all(b"hello\n");
                let mut buf = [0u8; 256];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let dir = w.project("live");
    let config = |entries: &str| {
        fs::write(
            dir.join("vibebox.toml"),
            format!(
                "[box]\nmounts = []\n[supervisor]\nauto_shutdown_ms = 60000\n[network]\nentries = [{entries}]\nhosts = {{ \"allowed.test\" = \"127.0.0.1\", \"later.test\" = \"127.0.0.1\" }}\n"
            ),
        )
        .unwrap();
    };
    config("\"allowed.test\"");
    w.vm(&dir).args(["trust", "--yes"]).assert().success();
    let hold = format!(
        "import socket\ns = socket.create_connection(('allowed.test', {hold_port}))\n\
         assert s.recv(6) == b'hello\\n'\nopen('connected', 'w').write('yes')\n\
         try:\n    s.recv(1)\n    why = 'eof'\nexcept OSError as e:\n    why = type(e).__name__\n\
         open('closed', 'w').write(why)\n"
    );
    fs::write(dir.join("hold.py"), hold).unwrap();
    w.vm(&dir)
        .args(["run", "-d", "--name", "hold", "--", "python3", "hold.py"])
        .assert()
        .success();
    assert!(
        eventually(Duration::from_secs(60), || dir.join("connected").exists()),
        "{:?}",
        terminals(&w, &dir)
    );
    let get = |name: &str| reaches_stand_in(&w, &dir, name, web);
    assert!(!get("later.test"));

    // A widening without a terminal: refused, nothing changes.
    config("\"later.test\"");
    w.vm(&dir)
        .arg("reload")
        .assert()
        .failure()
        .stderr(predicates::str::contains("later.test"));
    assert!(!get("later.test"));
    assert!(!dir.join("closed").exists());

    // Accepted: it applies, and the connection it refuses is closed.
    w.vm(&dir).args(["trust", "--yes"]).assert().success();
    w.vm(&dir)
        .arg("reload")
        .assert()
        .success()
        .stdout(predicates::str::contains("applied to the running box"));
    assert!(
        eventually(Duration::from_secs(30), || dir.join("closed").exists()),
        "the refused connection stayed open"
    );
    assert!(get("later.test"));
    assert!(!get("allowed.test"));
    let log = fs::read_to_string(dir.join(".vibebox/logs/network.log")).unwrap();
    assert!(log.contains("reloaded policy"), "{log}");

    // A narrowing needs no consent.
    config("");
    w.vm(&dir).arg("reload").assert().success();
    assert!(!get("later.test"));
    assert_eq!(session_state(&w, &dir).0, "running");
}

both_runtimes!(reload_changes_the_policy_of_a_running_box);

/// Ask mode: with nobody at a terminal an unlisted name is refused at once;
/// with a person attached, the lookup waits for the answer: "always" lets
/// it through and writes the name to vibebox.toml (accepted: the next start
/// asks nothing), "deny" refuses it and the keys typed meanwhile never reach
/// the box, "once" (for a lookup by another client) lasts until the box
/// stops and is written nowhere.
fn ask_mode_asks_the_person_at_the_terminal(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let Some(host) = vm::HostTmux::new() else {
        return;
    };
    let (web, _seen) = recording_server();
    let dir = w.project("ask");
    let names = ["listed", "asked", "denied", "once", "later"];
    let hosts: Vec<String> = names
        .iter()
        .map(|n| format!("\"{n}.test\" = \"127.0.0.1\""))
        .collect();
    fs::write(
        dir.join("vibebox.toml"),
        format!(
            "[box]\nmounts = []\n[supervisor]\nauto_shutdown_ms = 60000\n[network]\nmode = \"ask\"\nentries = [\"listed.test\"]\nhosts = {{ {} }}\n",
            hosts.join(", ")
        ),
    )
    .unwrap();
    w.vm(&dir).args(["trust", "--yes"]).assert().success();
    let get = |name: &str| reaches_stand_in(&w, &dir, name, web);
    let log = || fs::read_to_string(dir.join(".vibebox/logs/network.log")).unwrap_or_default();

    // Nobody to ask: refused at once, and logged.
    assert!(get("listed.test"));
    assert!(!get("asked.test"));
    assert!(log().contains("nobody is attached"), "{}", log());

    // A person at a terminal answers "always".
    host.open("p", &w.client_script(&dir, "p", &[]));
    host.wait_for("p", &["vibecoder@"]);
    host.send(
        "p",
        &[
            &format!("curl -s http://asked.test:{web}/; echo CURL-$?"),
            "Enter",
        ],
    );
    host.wait_for("p", &["the box looks up asked.test", "[a] always"]);
    // An answer key counts once the keyboard rested (asking::SETTLE).
    let rest = || std::thread::sleep(Duration::from_millis(1500));
    rest();
    host.send("p", &["a"]);
    host.wait_for(
        "p",
        &[
            "asked.test is reachable; added",
            "REACHED-THE-STAND-IN-SERVER",
            "CURL-0",
        ],
    );
    let text = fs::read_to_string(dir.join("vibebox.toml")).unwrap();
    let entries = toml::from_str::<toml::Value>(&text).unwrap()["network"]["entries"].clone();
    assert_eq!(
        entries,
        toml::Value::Array(vec!["listed.test".into(), "asked.test".into()]),
        "{text}"
    );
    let explain = w.vm(&dir).arg("explain").output().unwrap();
    assert!(
        !stdout(&explain).contains("Not accepted yet"),
        "{}",
        stdout(&explain)
    );

    // "deny": refused; what was typed while the question showed is dropped.
    host.send(
        "p",
        &[
            &format!("curl -s http://denied.test:{web}/; echo CURL-$?"),
            "Enter",
        ],
    );
    host.wait_for("p", &["the box looks up denied.test"]);
    host.send("p", &["x"]);
    rest();
    host.send("p", &["d"]);
    host.wait_for("p", &["denied.test stays unreachable", "CURL-6"]);
    host.send("p", &["echo MARK-$((6*7))", "Enter"]);
    host.wait_for("p", &["MARK-42"]);
    assert!(!host.screen("p").contains("xecho"), "{}", host.screen("p"));
    assert!(!get("denied.test"), "a denied name stays denied");

    // A lookup by another client (no terminal) asks the person too: "once".
    std::thread::scope(|scope| {
        let asker = scope.spawn(|| get("once.test"));
        host.wait_for("p", &["the box looks up once.test"]);
        rest();
        host.send("p", &["o"]);
        host.wait_for("p", &["once.test is reachable until the box stops"]);
        assert!(asker.join().unwrap());
    });
    let text = fs::read_to_string(dir.join("vibebox.toml")).unwrap();
    let now = toml::from_str::<toml::Value>(&text).unwrap()["network"]["entries"].clone();
    assert_eq!(now, entries, "only \"always\" is written: {text}");

    // The person leaves: "once" still holds, a new name is refused at once.
    host.send("p", &["exit", "Enter"]);
    host.wait_for("p", &["CLIENT-EXIT 0"]);
    assert!(get("once.test"));
    assert!(!get("later.test"));
    assert!(log().contains("denied by the person"), "{}", log());
}
both_runtimes!(ask_mode_asks_the_person_at_the_terminal);

/// The box is the attacker: its root replaces tmux with a program that
/// answers `ps` with escape sequences and a flood. What `ps` prints is
/// escaped and bounded, and `--json` stays JSON.
fn a_hostile_tmux_cannot_reach_the_host_terminal(rt: Rt) {
    let Some((_serial, w)) = begin(rt) else {
        return;
    };
    let dir = w.project("evil");
    write_config(&dir, "", 1000);
    let fake = "#!/bin/sh\ncase \"$*\" in *list-sessions*)\n  printf 'evil|1|0|0|||\\033]0;pwned\\007\\033[2J\\n'\n  yes 'x|1|0|0|||flood' | head -n 100000\n  exit 0;;\nesac\nexec /usr/bin/tmux \"$@\"\n";
    fs::write(dir.join("fake-tmux"), fake).unwrap();
    run_script(
        &w,
        &dir,
        "sudo install -m 755 fake-tmux /usr/local/bin/tmux && echo done",
    );
    let out = w.vm(&dir).arg("ps").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(text.contains("evil"), "{text}");
    assert!(
        text.lines().count() <= 257,
        "{} lines",
        text.lines().count()
    );
    let out = w.vm(&dir).args(["ps", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(256));
    w.vm(&dir).args(["stop", "--shutdown"]).assert().success();
}

both_runtimes!(a_hostile_tmux_cannot_reach_the_host_terminal);

/// The container's cgroups v1 limits (cpu_count = 2, ram_mb = 1024): the
/// box's processes are in a cgroup of their own with the CPU quota, a
/// program in the box that fills more memory than ram_mb is killed.
/// Returns the cgroup directories (they go when the box stops).
fn container_limits_hold(w: &World, dir: &Path, cpu: &Path, memory: &Path) -> Vec<PathBuf> {
    // Named after the session (other tests' boxes may still run).
    let id: uuid::Uuid = common::session_id(dir).parse().unwrap();
    let group = &cpu.join(format!("vibebox-{}", id.simple()));
    let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
    assert!(
        !procs.trim().is_empty(),
        "the box runs in {}",
        group.display()
    );
    let quota = fs::read_to_string(group.join("cpu.cfs_quota_us")).unwrap();
    let period = fs::read_to_string(group.join("cpu.cfs_period_us")).unwrap();
    assert_eq!(
        quota.trim().parse::<u64>().unwrap(),
        2 * period.trim().parse::<u64>().unwrap()
    );
    let mem_group = memory.join(group.file_name().unwrap());
    assert_eq!(
        fs::read_to_string(mem_group.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (1024u64 << 20).to_string()
    );
    // A process started in the box later is in it too.
    let out = w
        .vm(dir)
        .args(["exec", "--", "sh", "-c", "sleep 31 >/dev/null 2>&1 &"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let procs = fs::read_to_string(mem_group.join("cgroup.procs")).unwrap();
    assert!(
        procs
            .lines()
            .any(|p| fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .starts_with("sleep\x0031\0")),
        "sleep is in the box's memory cgroup: {procs}"
    );
    // Every process of the box (its pid namespace: the init, the exec
    // agent, sshd, the sleep) is in both groups: the box's first process
    // was moved in before it ran anything of the box's.
    let sleep = procs
        .lines()
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .starts_with("sleep\x0031\0")
        })
        .unwrap()
        .to_string();
    let ns = fs::read_link(format!("/proc/{sleep}/ns/pid")).unwrap();
    let in_box: Vec<String> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter(|p| fs::read_link(format!("/proc/{p}/ns/pid")).ok().as_ref() == Some(&ns))
        .collect();
    let names: Vec<String> = in_box
        .iter()
        .map(|p| fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
        .collect();
    assert!(
        names.iter().any(|n| n.trim() == "vibebox-init")
            && names.iter().any(|n| n.trim() == "vibebox-agent"),
        "the box's processes: {names:?}"
    );
    for g in [group, &mem_group] {
        let listed = fs::read_to_string(g.join("cgroup.procs")).unwrap();
        for p in &in_box {
            assert!(
                listed.lines().any(|l| l == p) || !Path::new(&format!("/proc/{p}")).exists(),
                "process {p} of the box ({:?}) is outside {}",
                fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default(),
                g.display()
            );
        }
    }
    // Filling 1.5 GiB in a box of 1 GiB: the kernel kills it (no swap on
    // top: memsw is limited too where the host accounts swap).
    let out = w
        .vm(dir)
        .args([
            "exec",
            "--",
            "python3",
            "-c",
            "b = b'x' * (1536 << 20); print('filled', len(b))",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the box filled more than ram_mb: {}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("filled"));
    // The box lives on.
    w.vm(dir).args(["exec", "--", "true"]).assert().success();
    vec![group.clone(), mem_group]
}
