//! `cpu_count` and `ram_mb` for the container: a cgroup of the box's own.
//!
//! The box is a process tree on the host's kernel, so its limits are a
//! cgroup's: memory (`ram_mb`, no swap beyond it) and CPU time (`cpu_count`
//! CPUs' worth per period, as `docker --cpus` does). The cgroup is made
//! below the supervisor's own one. With cgroups v1 the stage moves the box's
//! first process into it after `crun create`, before `crun start` runs the
//! box's init (so every process of the box starts inside it), through files
//! the supervisor opened. The first move of a process between cgroups after
//! a quiet while waits for an RCU grace period (the kernel's
//! `cgroup_threadgroup_rwsem`: 15-25 ms here, about a third of the whole
//! start); [`start_first_move_wait`] starts that wait as the start begins, so
//! that it passes while the namespaces and the container are made.
//!
//! - **cgroups v1** (this is what [`probe`] finds on hosts like the one
//!   vibebox is developed on): `memory` and `cpu` hierarchies, written
//!   directly. Only where their directories are writable — as root, or where
//!   an administrator delegated them; an ordinary user gets the reason.
//! - **cgroups v2**: a cgroup cannot hold processes and delegate controllers
//!   at once, and the part of the tree a user may write is handed out by
//!   systemd. The box runs in a transient scope made by
//!   `systemd-run [--user] --scope` with `MemoryMax`, `MemorySwapMax` and
//!   `CPUQuota`; without a reachable systemd the limits are not applied and
//!   [`probe`] says why.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What the box may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPUs' worth of time per period.
    pub cpus: u32,
    /// Memory in MiB (swap not on top of it).
    pub ram_mb: u32,
}

/// How the limits are applied on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// cgroups v1: new directories under these (the supervisor's own
    /// cgroups in the `memory` and `cpu` hierarchies).
    V1 { memory: PathBuf, cpu: PathBuf },
    /// cgroups v2: a transient systemd scope (`user`: the user's manager).
    Systemd { user: bool },
}

impl Placement {
    /// One line for `explain`.
    pub fn describe(&self) -> String {
        match self {
            Placement::V1 { .. } => {
                "applied through cgroups v1 (memory limit without swap, CPU quota)".into()
            }
            Placement::Systemd { user: true } => {
                "applied through cgroups v2 (a systemd user scope: MemoryMax, CPUQuota)".into()
            }
            Placement::Systemd { user: false } => {
                "applied through cgroups v2 (a systemd scope: MemoryMax, CPUQuota)".into()
            }
        }
    }
}

/// The lines of `/proc/self/cgroup` and `/proc/self/mountinfo` that matter.
#[derive(Debug, Default)]
struct HostView {
    /// `(controllers, path)` from `/proc/self/cgroup`.
    memberships: Vec<(String, String)>,
    /// `(mount point, mount root, fs type, super options)` of cgroup mounts.
    mounts: Vec<(PathBuf, String, String, String)>,
}

impl HostView {
    fn read() -> HostView {
        let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        HostView::parse(&cgroup, &mountinfo)
    }

    fn parse(cgroup: &str, mountinfo: &str) -> HostView {
        let memberships = cgroup
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        let mounts = mountinfo
            .lines()
            .filter_map(|l| {
                // id parent major:minor root mountpoint options [optional...] - type source super
                let (left, right) = l.split_once(" - ")?;
                let f: Vec<&str> = left.split(' ').collect();
                let r: Vec<&str> = right.split(' ').collect();
                let fstype = *r.first()?;
                if fstype != "cgroup" && fstype != "cgroup2" {
                    return None;
                }
                Some((
                    PathBuf::from(unescape(f.get(4)?)),
                    unescape(f.get(3)?),
                    fstype.to_string(),
                    r.get(2).copied().unwrap_or("").to_string(),
                ))
            })
            .collect();
        HostView {
            memberships,
            mounts,
        }
    }

    /// The directory of our cgroup in the v1 hierarchy that has `controller`.
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        let (_, path) = self
            .memberships
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c == controller))?;
        let (mount, root, _, _) = self
            .mounts
            .iter()
            .find(|(_, _, t, opts)| t == "cgroup" && opts.split(',').any(|o| o == controller))?;
        let rel = path.strip_prefix(root.as_str())?.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rel.is_empty() {
            mount.clone()
        } else {
            mount.join(rel)
        })
    }

    /// Whether the controllers are on cgroups v2 (`/sys/fs/cgroup` is the
    /// unified hierarchy and lists them).
    fn v2_controllers(&self) -> Option<String> {
        let (mount, _, _, _) = self
            .mounts
            .iter()
            .find(|(m, _, t, _)| t == "cgroup2" && m == Path::new("/sys/fs/cgroup"))?;
        fs::read_to_string(mount.join("cgroup.controllers")).ok()
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn writable(dir: &Path) -> bool {
    rustix::fs::access(
        dir,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .is_ok()
}

/// Where the box's limits can be applied here, or why they cannot.
pub fn probe() -> Result<Placement, String> {
    let view = HostView::read();
    if let Some(controllers) = view.v2_controllers() {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !has("memory") || !has("cpu") {
            return Err(format!(
                "the cgroups v2 hierarchy here lacks the memory or cpu controller (it has: {})",
                controllers.trim()
            ));
        }
        let root = rustix::process::geteuid().is_root();
        if !vibebox_vm::runtime::on_path("systemd-run") {
            return Err("cgroups v2 here, but systemd-run is not installed to make a scope".into());
        }
        let reachable = if root {
            Path::new("/run/systemd/system").is_dir()
        } else {
            std::env::var_os("XDG_RUNTIME_DIR")
                .map(|d| Path::new(&d).join("systemd/private").exists())
                .unwrap_or(false)
        };
        if !reachable {
            return Err(if root {
                "cgroups v2 here, but systemd is not running to make a scope".into()
            } else {
                "cgroups v2 here, but your systemd user manager is not reachable (XDG_RUNTIME_DIR/systemd/private; log in through a session that starts it)".into()
            });
        }
        // Measure, do not guess: make a scope for `true` with the same kind
        // of properties.
        let mut trial = std::process::Command::new("systemd-run");
        trial
            .args(systemd_run_args(
                !root,
                "",
                Limits {
                    cpus: 1,
                    ram_mb: 64,
                },
            ))
            .arg("true")
            .stdin(std::process::Stdio::null());
        return match trial.output() {
            Ok(o) if o.status.success() => Ok(Placement::Systemd { user: !root }),
            Ok(o) => Err(format!(
                "cgroups v2 here, but systemd-run cannot make a scope with limits: {}",
                vibebox_core::text::for_terminal(String::from_utf8_lossy(&o.stderr).trim())
            )),
            Err(e) => Err(format!("cgroups v2 here, but systemd-run cannot run: {e}")),
        };
    }
    let (Some(memory), Some(cpu)) = (view.v1_dir("memory"), view.v1_dir("cpu")) else {
        return Err("no cgroup memory and cpu controllers are mounted here".into());
    };
    if !writable(&memory) || !writable(&cpu) {
        return Err(format!(
            "this host has only cgroups v1, not delegated to users: {} is not writable; root can apply them",
            if writable(&memory) { &cpu } else { &memory }.display()
        ));
    }
    Ok(Placement::V1 { memory, cpu })
}

/// The box's cgroups v1 directories, made and limited; removed on drop
/// (once the box's processes are gone).
#[derive(Debug)]
pub struct V1Group {
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("cannot write {value} to {}: {e}", path.display()))
}

impl V1Group {
    /// Makes `<memory>/<name>` and `<cpu>/<name>` with the limits.
    pub fn create(
        memory: &Path,
        cpu: &Path,
        name: &str,
        limits: Limits,
    ) -> Result<V1Group, String> {
        let mut group = V1Group { dirs: Vec::new() };
        for parent in [memory, cpu] {
            let dir = parent.join(name);
            // A directory left by a killed supervisor is taken over.
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
            group.dirs.push(dir);
        }
        let mem = group.dirs[0].clone();
        let bytes = (u64::from(limits.ram_mb) << 20).to_string();
        write(&mem.join("memory.limit_in_bytes"), &bytes)?;
        // Without swap accounting the file is absent (and a host without
        // swap has nothing to add).
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &bytes)?;
        }
        let cpu = group.dirs[1].clone();
        let period: u64 = 100_000;
        write(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
        write(
            &cpu.join("cpu.cfs_quota_us"),
            &(period * u64::from(limits.cpus.max(1))).to_string(),
        )?;
        Ok(group)
    }

    /// The `cgroup.procs` files of the group.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The `cgroup.procs` files, opened for writing (close-on-exec): the
    /// kernel checks who opened such a file, so a process that inherits one
    /// (the stage, inside its user namespace) can enter the group with it.
    pub fn open_procs(&self) -> Result<Vec<OwnedFd>, String> {
        self.procs_files()
            .into_iter()
            .map(|p| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))
            })
            .collect()
    }
}

impl Drop for V1Group {
    fn drop(&mut self) {
        // The kernel ends the box's last processes just after its PID 1:
        // a cgroup with processes cannot go yet (EBUSY), so wait a little.
        for d in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// Starts, in a thread, the kernel's wait that the box's move into its
/// cgroup would otherwise wait for later: moves this process to the cgroup
/// of `dir` (one of this process's own cgroups), where it is already — a
/// move that changes nothing but passes the same lock. The box's move, a
/// few milliseconds later, then finds the wait over or under way.
pub fn start_first_move_wait(dir: &Path) {
    let procs = dir.join("cgroup.procs");
    let me = std::process::id().to_string();
    std::thread::spawn(move || {
        let _ = fs::write(procs, me);
    });
}

/// Moves the process `pid` (0: the calling one) into the cgroup of each of
/// `procs` (open `cgroup.procs` files).
pub fn enter(procs: &[impl AsFd], pid: u32) -> std::io::Result<()> {
    let text = pid.to_string();
    for p in procs {
        rustix::io::write(p, text.as_bytes())?;
    }
    Ok(())
}

/// `systemd-run` arguments that put the command after them in a scope with
/// the limits (named `name`, unless empty).
pub fn systemd_run_args(user: bool, name: &str, limits: Limits) -> Vec<String> {
    let mut args = Vec::new();
    if user {
        args.push("--user".to_string());
    }
    args.extend([
        "--scope".to_string(),
        "--quiet".to_string(),
        "--collect".to_string(),
    ]);
    if !name.is_empty() {
        args.push(format!("--unit={name}"));
    }
    args.extend([
        format!("--property=MemoryMax={}M", limits.ram_mb),
        "--property=MemorySwapMax=0".to_string(),
        format!(
            "--property=CPUQuota={}%",
            u64::from(limits.cpus.max(1)) * 100
        ),
        "--".to_string(),
    ]);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CGROUP: &str =
        "9:name=systemd:/\n4:memory:/process_api/8b4a\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const V1_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v1_directories_of_its_own_cgroups() {
        let v = HostView::parse(V1_CGROUP, V1_MOUNTS);
        assert_eq!(
            v.v1_dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/8b4a")
        );
        assert_eq!(v.v1_dir("cpu").unwrap(), Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(v.v1_dir("pids"), None);
        // The unified mount under /sys/fs/cgroup/unified is not v2 mode.
        assert_eq!(v.v2_controllers(), None);
    }

    #[test]
    fn joined_controllers_and_mounts_of_a_subtree() {
        let cg = "3:cpu,cpuacct:/a/b\n4:memory:/a/b\n";
        let mi = "\
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 /a /mnt/mem\\040x rw - cgroup cgroup rw,memory
";
        let v = HostView::parse(cg, mi);
        assert_eq!(
            v.v1_dir("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/a/b")
        );
        assert_eq!(v.v1_dir("memory").unwrap(), Path::new("/mnt/mem x/b"));
        // A path outside the mounted root, or climbing out, is not used.
        let v = HostView::parse("4:memory:/z\n", mi);
        assert_eq!(v.v1_dir("memory"), None);
        let v = HostView::parse("4:memory:/a/../..\n", mi);
        assert_eq!(v.v1_dir("memory"), None);
    }

    #[test]
    fn v1_group_writes_the_limits_and_goes_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let (mem, cpu) = (t.path().join("memory"), t.path().join("cpu"));
        fs::create_dir_all(&mem).unwrap();
        fs::create_dir_all(&cpu).unwrap();
        // A stale directory from a killed supervisor is taken over.
        fs::create_dir(mem.join("vibebox-x")).unwrap();
        let g = V1Group::create(
            &mem,
            &cpu,
            "vibebox-x",
            Limits {
                cpus: 2,
                ram_mb: 512,
            },
        );
        // A plain directory is not a cgroup: the kernel would have made the
        // files; here the writes create them.
        let g = g.unwrap();
        let read = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(
            read(mem.join("vibebox-x/memory.limit_in_bytes")),
            "536870912"
        );
        assert_eq!(read(cpu.join("vibebox-x/cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("vibebox-x/cpu.cfs_quota_us")), "200000");
        assert_eq!(g.procs_files()[1], cpu.join("vibebox-x/cgroup.procs"));
        // The stage's way in: the files opened for writing, written a pid.
        for d in [&mem, &cpu] {
            fs::write(d.join("vibebox-x/cgroup.procs"), "").unwrap();
        }
        let fds = g.open_procs().unwrap();
        enter(&fds, 42).unwrap();
        assert_eq!(read(mem.join("vibebox-x/cgroup.procs")), "42");
        // Files inside keep a plain directory; a cgroup's vanish with rmdir.
        for d in [&mem, &cpu] {
            for f in fs::read_dir(d.join("vibebox-x")).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        drop(g);
        assert!(!mem.join("vibebox-x").exists() && !cpu.join("vibebox-x").exists());
    }

    #[test]
    fn systemd_scope_properties() {
        let a = systemd_run_args(
            true,
            "vibebox-1",
            Limits {
                cpus: 3,
                ram_mb: 2048,
            },
        );
        assert_eq!(
            a.join(" "),
            "--user --scope --quiet --collect --unit=vibebox-1 --property=MemoryMax=2048M --property=MemorySwapMax=0 --property=CPUQuota=300% --"
        );
        assert!(!systemd_run_args(false, "n", Limits { cpus: 0, ram_mb: 1 })
            .contains(&"--user".to_string()));
    }
}
