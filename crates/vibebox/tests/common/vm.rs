//! Helpers for tests that boot the real guest (TCG where KVM is not usable).
//!
//! The base image is built once into a shared cache
//! (`~/.cache/vibebox/test-home/images`) and linked into each test's
//! `VIBEBOX_HOME`. Without QEMU the tests skip on a developer machine, but
//! with `CI=true` a missing prerequisite fails loudly.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::World;

/// VM tests run one at a time (they are CPU-heavy on 2 cores).
pub static SERIAL: Mutex<()> = Mutex::new(());

fn real_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| real_home().join(".cache"))
        .join("vibebox")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The PATH for vibebox in tests: the usual one plus the cached virtiofsd.
pub fn test_path() -> String {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(cache_dir().join("virtiofsd/bin"));
    std::env::join_paths(dirs)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn missing_prerequisite() -> Option<String> {
    for p in [
        "qemu-system-x86_64",
        "qemu-img",
        "ssh",
        "ssh-keygen",
        "unshare",
    ] {
        if !on_path(p) {
            return Some(format!("{p} is not installed"));
        }
    }
    let virtiofsd = on_path("virtiofsd") || cache_dir().join("virtiofsd/bin/virtiofsd").is_file();
    if !virtiofsd {
        return Some("virtiofsd is not installed (scripts/install-deps builds it)".into());
    }
    None
}

/// The runtime an end-to-end test runs boxes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    /// The QEMU micro-VM.
    Vm,
    /// crun in a user namespace.
    Container,
}

impl Rt {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Rt::Vm => "vm",
            Rt::Container => "container",
        }
    }
}

fn missing_for_container() -> Option<String> {
    for p in ["crun", "unshare", "newuidmap", "ip", "ssh", "ssh-keygen"] {
        if !on_path(p) {
            return Some(format!("{p} is not installed"));
        }
    }
    vibebox_core::subids::SubIds::of_current_user()
        .err()
        .map(|e| format!("{e} (scripts/install-deps)"))
}

/// Whether end-to-end tests of `rt` can run here; panics under CI when they
/// cannot.
pub fn available_for(rt: Rt) -> bool {
    let missing = match rt {
        Rt::Vm => missing_prerequisite(),
        Rt::Container => missing_for_container(),
    };
    match missing {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{} test prerequisites missing under CI: {why}", rt.name());
            }
            eprintln!("skipping {} test: {why}", rt.name());
            false
        }
    }
}

/// Whether VM tests can run here; panics under CI when they cannot.
pub fn available() -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("VM test prerequisites missing under CI: {why}");
            }
            eprintln!("skipping VM test: {why}");
            false
        }
    }
}

/// The shared images directory, with the default image built (once).
pub fn shared_images() -> PathBuf {
    let home = cache_dir().join("test-home");
    let images = home.join("images");
    fs::create_dir_all(&images).expect("cache dir");
    let lock = fs::File::create(home.join("build.lock")).expect("lock file");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");
    let listed = Command::new(assert_cmd::cargo::cargo_bin("vibebox"))
        .args(["image", "list", "--json"])
        .env("VIBEBOX_HOME", &home)
        .output()
        .expect("vibebox image list runs");
    let up_to_date = serde_json::from_slice::<serde_json::Value>(&listed.stdout)
        .ok()
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|i| i["name"] == "debian-bookworm")
                .map(|i| i["up_to_date"] == true)
        })
        .unwrap_or(false);
    if !up_to_date {
        eprintln!("building the shared test image (once, about 2 minutes)");
        let status = Command::new(assert_cmd::cargo::cargo_bin("vibebox"))
            .args(["image", "build"])
            .env("VIBEBOX_HOME", &home)
            .status()
            .expect("vibebox image build runs");
        assert!(status.success(), "the shared test image could not be built");
    }
    images
}

impl World {
    /// A world whose VIBEBOX_HOME shares the cached base image; its boxes run
    /// in the VM.
    pub fn with_image() -> World {
        World::with_image_for(Rt::Vm)
    }

    /// A world whose VIBEBOX_HOME shares the cached base image; its boxes run
    /// with `rt`.
    pub fn with_image_for(rt: Rt) -> World {
        let mut w = World::new();
        w.runtime = Some(rt.name());
        std::os::unix::fs::symlink(shared_images(), w.vibebox_home().join("images"))
            .expect("link images");
        w
    }

    /// `vibebox` for a VM test: the world's env plus the test PATH.
    pub fn vm(&self, dir: &Path) -> assert_cmd::Command {
        let mut c = self.vibebox(dir);
        c.env("PATH", test_path())
            .timeout(std::time::Duration::from_secs(600));
        if let Some(rt) = self.runtime {
            c.env("VIBEBOX_RUNTIME", rt);
        }
        c
    }

    /// The JSON of `vibebox list --json`.
    pub fn list_json(&self, dir: &Path) -> serde_json::Value {
        let out = self
            .vibebox(dir)
            .args(["list", "--json"])
            .output()
            .expect("list");
        serde_json::from_slice(&out.stdout).expect("list JSON")
    }
}

/// Processes whose command line mentions `needle` (other than ourselves).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// Waits (bounded) until `f` is true; returns whether it became true.
pub fn eventually(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    f()
}

/// Host terminals for tests: each client runs in a session of a private tmux
/// server (killed on drop), whose screen the test reads and types into.
pub struct HostTmux {
    socket: String,
}

impl HostTmux {
    /// A new private tmux server; `None` (a skip) when tmux is missing, a
    /// panic under CI.
    pub fn new() -> Option<HostTmux> {
        if !on_path("tmux") {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("tmux is missing under CI (scripts/install-test-deps installs it)");
            }
            eprintln!("skipping: tmux is not installed");
            return None;
        }
        Some(HostTmux {
            socket: format!("vibebox-test-{}-{}", std::process::id(), rand_suffix()),
        })
    }

    fn tmux(&self) -> std::process::Command {
        let mut c = std::process::Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    /// Opens terminal `name` running `script` (a file written by
    /// [`World::client_script`]).
    pub fn open(&self, name: &str, script: &Path) {
        let ok = self
            .tmux()
            .args(["new-session", "-d", "-s", name, "-x", "150", "-y", "40"])
            .arg(format!("{}; sleep 600", script.display()))
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux new-session {name}");
    }

    /// Types `keys` (tmux key names or text) into terminal `name`.
    pub fn send(&self, name: &str, keys: &[&str]) {
        let _ = self
            .tmux()
            .args(["send-keys", "-t", &format!("={name}:")])
            .args(keys)
            .status();
    }

    /// Waits (bounded) until terminal `name` shows every one of `needles`;
    /// panics with its screen when it does not.
    pub fn wait_for(&self, name: &str, needles: &[&str]) {
        let limit = std::time::Duration::from_secs(120);
        let seen = || {
            let s = self.screen(name);
            needles.iter().all(|n| s.contains(n))
        };
        assert!(
            eventually(limit, seen),
            "terminal {name} never showed {needles:?}:\n{}",
            self.screen(name)
        );
    }

    /// What terminal `name` shows now (with its scrollback).
    pub fn screen(&self, name: &str) -> String {
        let out = self
            .tmux()
            .args([
                "capture-pane",
                "-p",
                "-S",
                "-200",
                "-t",
                &format!("={name}:"),
            ])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for HostTmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % 1_000_000
}

impl World {
    /// A shell script that runs `vibebox ARGS` in `dir` with this world's
    /// environment (what a person would type at a terminal).
    pub fn client_script(&self, dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let q = vibebox_core::text::shell_quote;
        let exe = assert_cmd::cargo::cargo_bin("vibebox");
        let mut s = format!(
            "#!/bin/sh\ncd {}\nexport HOME={} VIBEBOX_HOME={} PATH={}\n",
            q(&dir.display().to_string()),
            q(&self.home().display().to_string()),
            q(&self.vibebox_home().display().to_string()),
            q(&test_path()),
        );
        if let Some(rt) = self.runtime {
            s.push_str(&format!("export VIBEBOX_RUNTIME={rt}\n"));
        }
        let args: Vec<String> = args.iter().map(|a| q(a)).collect();
        s.push_str(&format!(
            "{} {}\necho \"CLIENT-EXIT $?\"\n",
            q(&exe.display().to_string()),
            args.join(" ")
        ));
        let path = self.root().join(format!("{name}.sh"));
        fs::write(&path, s).expect("write client script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}
