//! [`ContainerRuntime`]: the box as a crun container.
//!
//! A start checks the image, unpacks its root tree once, makes the keys,
//! writes the OCI bundle, and runs
//! `unshare --user … --mount --net --pid --fork --kill-child vibebox
//! __container-stage` ([`crate::stage`]), which mounts the overlay root,
//! makes the NIC and runs crun. The NIC's packet socket goes to the network
//! engine; the box's init gets its configuration over the same control
//! protocol as in the VM and reports ready with its SSH host key. Killing the
//! supervisor kills `unshare`, whose child is PID 1 of the box's pid
//! namespace: nothing of the box survives it.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vibebox_core::runtime::{
    Availability, Machine, Runtime, RuntimeError, StartEvents, StartRequest,
};
use vibebox_core::subids::SubIds;
use vibebox_vm::guest::{self, NotReady};
use vibebox_vm::process::Tied;
use vibebox_vm::runtime::find_on_path;
use vibebox_vm::ssh;

use crate::bundle::{self, BundleSpec};
use crate::cgroup;
use crate::rootfs;
use crate::stage::StageArgs;

/// How long the box's init may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the stage may take to mount, make the NIC and start crun.
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a box may take to power off before it is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

fn fail(msg: impl Into<String>) -> RuntimeError {
    RuntimeError(msg.into())
}

/// The container runtime.
#[derive(Debug, Clone)]
pub struct ContainerRuntime {
    exe: PathBuf,
    /// Where a passed probe is remembered (`VIBEBOX_HOME/container-probe.json`).
    probe_cache: PathBuf,
}

/// What a passed probe depends on: this boot, this user, the user's
/// subordinate ids, the programs (which file, which version of it) and the
/// kernel's switches for user namespaces. A probe is remembered only while
/// all of it stays the same.
fn probe_key(tools: &[PathBuf], ids: &SubIds) -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default().trim().to_string();
    let mut key = vec![
        read("/proc/sys/kernel/random/boot_id"),
        rustix::process::getuid().as_raw().to_string(),
        ids.unshare_args().join(" "),
    ];
    for t in tools {
        let stamp = fs::metadata(t).map_or(String::new(), |m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}:{}", m.ino(), m.size(), m.mtime(), m.mtime_nsec())
        });
        key.push(format!("{}={stamp}", t.display()));
    }
    for sysctl in [
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ] {
        key.push(read(sysctl));
    }
    key.join("\n")
}

/// crun's version line, e.g. `crun version 1.8.1`.
fn crun_version() -> Option<String> {
    let out = Command::new("crun").arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

impl ContainerRuntime {
    /// `exe` is the vibebox executable (it runs the stage); a passed probe
    /// is remembered in `vibebox_home`.
    pub fn new(exe: &Path, vibebox_home: &Path) -> ContainerRuntime {
        ContainerRuntime {
            exe: exe.to_path_buf(),
            probe_cache: vibebox_home.join("container-probe.json"),
        }
    }

    /// The isolation a passed probe with this `key` found, if one did.
    fn remembered(&self, key: &str) -> Option<String> {
        let text = fs::read_to_string(&self.probe_cache).ok()?;
        let (k, reason) = serde_json::from_str::<(String, String)>(&text).ok()?;
        (k == key).then_some(reason)
    }

    /// Remembers a passed probe (best effort: without it the next start
    /// probes again).
    fn remember(&self, key: &str, reason: &str) {
        if let Ok(text) = serde_json::to_string(&(key, reason)) {
            if let Some(dir) = self.probe_cache.parent() {
                let _ = fs::create_dir_all(dir);
            }
            let _ = vibebox_core::project::write_atomic(&self.probe_cache, text.as_bytes());
        }
    }

    /// Tries a user namespace like the stage's; on success, the isolation
    /// the runtime gives (with crun's version).
    fn probe(&self, ids: &SubIds) -> Result<String, String> {
        // The kernel may refuse unprivileged user namespaces: try one.
        match Command::new("unshare")
            .args(ids.unshare_args())
            .args(["--mount", "--net", "--pid", "--fork", "true"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "a user namespace cannot be made here: {}",
                    vibebox_core::text::for_terminal(String::from_utf8_lossy(&o.stderr).trim())
                ))
            }
            Err(e) => return Err(format!("cannot run unshare: {e}")),
        }
        Ok(format!(
            "{}: user namespace, seccomp, no CAP_SYS_ADMIN",
            crun_version().unwrap_or_else(|| "crun".into())
        ))
    }
}

impl Runtime for ContainerRuntime {
    fn name(&self) -> &'static str {
        "container"
    }

    fn availability(&self) -> Availability {
        let no = |reason: String| Availability {
            available: false,
            reason,
        };
        let mut tools = Vec::new();
        for (tool, package) in [
            ("crun", "crun"),
            ("unshare", "util-linux"),
            ("newuidmap", "uidmap"),
            ("newgidmap", "uidmap"),
            ("ip", "iproute2"),
        ] {
            match find_on_path(tool) {
                Some(path) => tools.push(path),
                None => {
                    return no(format!(
                        "{tool} is not installed (install {package}, or run scripts/install-deps)"
                    ))
                }
            }
        }
        let ids = match SubIds::of_current_user() {
            Ok(ids) => ids,
            Err(e) => return no(format!("{e}; {}", e.help())),
        };
        // The probe starts three programs: a passed one is remembered for
        // as long as nothing it depends on changes (a failed one is tried
        // again at each start).
        let key = probe_key(&tools, &ids);
        if let Some(reason) = self.remembered(&key) {
            return Availability {
                available: true,
                reason,
            };
        }
        match self.probe(&ids) {
            Ok(reason) => {
                self.remember(&key, &reason);
                Availability {
                    available: true,
                    reason,
                }
            }
            Err(why) => no(why),
        }
    }

    fn start(
        &self,
        req: &StartRequest<'_>,
        events: &mut dyn StartEvents,
    ) -> Result<Box<dyn Machine>, RuntimeError> {
        let project = req.plan.project();
        // The box's own cgroup (cpu_count, ram_mb), where this host lets us;
        // first, as the kernel's wait for it starts here (see `cgroup`).
        let limits = cgroup::Limits {
            cpus: req.config.cpu_count,
            ram_mb: req.config.ram_mb,
        };
        let group_name = format!(
            "vibebox-{}",
            req.run_dir
                .file_name()
                .map_or("box".into(), |n| n.to_string_lossy())
        );
        let mut group = None;
        let mut cmd = match cgroup::probe() {
            Ok(cgroup::Placement::V1 { memory, cpu }) => {
                group = Some(
                    cgroup::V1Group::create(&memory, &cpu, &group_name, limits)
                        .map_err(|e| fail(format!("cannot apply cpu_count and ram_mb: {e}")))?,
                );
                cgroup::start_first_move_wait(&memory);
                events.log(&format!(
                    "limits: {} CPUs, {} MiB through cgroups v1 ({group_name})",
                    limits.cpus, limits.ram_mb
                ));
                Command::new("unshare")
            }
            Ok(cgroup::Placement::Systemd { user }) => {
                events.log(&format!(
                    "limits: {} CPUs, {} MiB through a systemd scope ({group_name}.scope)",
                    limits.cpus, limits.ram_mb
                ));
                let mut c = Command::new("systemd-run");
                c.args(cgroup::systemd_run_args(user, &group_name, limits))
                    .arg("unshare");
                c
            }
            Err(why) => {
                events.log(&format!("cpu_count and ram_mb are not applied: {why}"));
                Command::new("unshare")
            }
        };
        let name = &req.config.image;
        let image = name.dir(req.vibebox_home);
        let manifest = vibebox_image::read_manifest(&image).map_err(|e| {
            fail(format!(
                "{e}; build the image with `vibebox image build --name {name}`"
            ))
        })?;
        if manifest.guest_version != vibebox_image::guest_version() {
            return Err(fail(format!(
                "the base image `{name}` was built by another version of vibebox; rebuild it with `vibebox image build --name {name}`"
            )));
        }
        let ids = SubIds::of_current_user().map_err(|e| fail(format!("{e}; {}", e.help())))?;
        let lower = rootfs::ensure_unpacked(&image, &ids, &mut |s| events.progress(s))
            .map_err(|e| fail(e.to_string()))?;
        let run = req.run_dir;
        let args_file = run.join("stage.json");
        events.progress("starting the container (crun)");
        let (stage_ours, stage_theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| fail(format!("cannot make a socket pair: {e}")))?;
        let (ctl_ours, ctl_theirs) =
            UnixStream::pair().map_err(|e| fail(format!("cannot make a socket pair: {e}")))?;
        // What the stage, crun and the box's init write goes through a pipe
        // into a capped log: crun hands its output fds to the box (and makes
        // them the box root's), so they must not be the log file itself.
        let log_path = project.logs_dir().join("container.log");
        let (out_read, out_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| fail(format!("cannot make a pipe: {e}")))?;
        vibebox_vm::runtime::capped_copy(move || Some(fs::File::from(out_read)), &log_path)?;
        let log2 = out_write
            .try_clone()
            .map_err(|e| fail(format!("cannot make a pipe: {e}")))?;
        let log = out_write;
        // The stage moves the box into the group through these before its
        // init runs (fds 4, 5, …; it closes them before that).
        let procs = match &group {
            Some(g) => g.open_procs().map_err(fail)?,
            None => Vec::new(),
        };
        let stage_procs: Vec<i32> = (0..procs.len() as i32).map(|i| 4 + i).collect();
        cmd.args(ids.unshare_args())
            .args([
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
            ])
            .arg(&self.exe)
            .arg("__container-stage")
            .arg(&args_file)
            .stdin(Stdio::from(stage_theirs))
            .stdout(log)
            .stderr(log2);
        let ctl_fd = ctl_theirs.as_raw_fd();
        let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: only async-signal-safe calls (prctl, dup2, fcntl) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)?;
                // The box's control channel is fd 3, inherited down to its
                // init; the cgroup files follow it. Copied out of the way
                // first: a source may have a target's number.
                let mut moved = [-1; 8];
                let sources = std::iter::once(ctl_fd).chain(procs_fds.iter().copied());
                for (slot, from) in moved.iter_mut().zip(sources) {
                    *slot = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 16);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (&from, to) in moved.iter().take(1 + procs_fds.len()).zip(3..) {
                    if libc::dup2(from, to) < 0 || libc::fcntl(to, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run unshare: {e}")))?;
        drop(ctl_theirs);
        drop(cmd);
        drop(procs);
        let mut machine = ContainerMachine {
            child: Tied(child),
            control: ctl_ours,
            sshd_started: false,
            _group: group,
        };
        // What the stage reads is written while unshare makes the
        // namespaces; the stage waits for "go" (dropping `machine` on an
        // error ends it).
        let keys = ssh::ensure_keypair(&project.ssh_dir()).map_err(|e| fail(e.to_string()))?;
        let layers = project.state_dir().join("container");
        fs::create_dir_all(&layers)
            .map_err(|e| fail(format!("cannot create {}: {e}", layers.display())))?;

        let mk = |d: &Path| {
            fs::create_dir_all(d).map_err(|e| fail(format!("cannot create {}: {e}", d.display())))
        };
        let (bundle_dir, merged, overlay_dir, crun_root, empty_dir) = (
            run.join("bundle"),
            run.join("rootfs"),
            run.join("overlay"),
            run.join("crun"),
            run.join("empty"),
        );
        for d in [&bundle_dir, &merged, &overlay_dir, &crun_root, &empty_dir] {
            mk(d)?;
        }
        let empty_file = run.join("empty-file");
        fs::write(&empty_file, "")
            .map_err(|e| fail(format!("cannot write {}: {e}", empty_file.display())))?;
        let spec = BundleSpec {
            rootfs: &merged,
            shares: &req.plan.shares,
            empty_dir: &empty_dir,
            empty_file: &empty_file,
        };
        let config = bundle::config(&spec);
        let write_json = |path: PathBuf, value: &serde_json::Value| {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
            fs::write(&path, text)
                .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
        };
        write_json(bundle_dir.join("config.json"), &config)?;
        let args = StageArgs {
            lower,
            layers,
            merged,
            overlay_dir,
            bundle: bundle_dir,
            crun_root,
            guest_mac: req.network.guest_mac.clone(),
            guest_address: req.network.guest_address,
            prefix: req.network.prefix,
            gateway: req.network.gateway,
            checks: bundle::guarded_paths(&req.plan.shares),
            cgroup_fds: stage_procs,
        };
        write_json(
            args_file.clone(),
            &serde_json::to_value(&args).map_err(|e| fail(e.to_string()))?,
        )?;

        rustix::net::send(&stage_ours, b"go", rustix::net::SendFlags::empty())
            .map_err(|e| fail(format!("cannot start the container's stage: {e}")))?;
        let log_tail = || {
            let text = fs::read(&log_path).unwrap_or_default();
            let tail = &text[text.len().saturating_sub(2000)..];
            String::from_utf8_lossy(tail)
                .lines()
                .map(vibebox_core::text::for_terminal)
                .collect::<Vec<_>>()
                .join("\n")
        };
        wait_for_stage(&stage_ours, &mut machine, req, events)
            .map_err(|e| fail(format!("{e}; the container log ends with:\n{}", log_tail())))?;

        let msg = guest::config_message(&keys, req.network, &[], &req.plan.explain);
        machine
            .control
            .write_all(msg.as_bytes())
            .map_err(|e| fail(format!("the box's control channel failed: {e}")))?;
        let start = Instant::now();
        let mut lines = guest::ControlLines::new(&machine.control)
            .map_err(|e| fail(format!("the box's control channel failed: {e}")))?;
        let ready = guest::await_ready(&mut lines, &project.ssh_dir(), READY_TIMEOUT, || {
            machine.child.0.try_wait().ok().flatten()
        });
        match ready {
            Ok(()) => {}
            Err(NotReady::Ended(status)) => {
                return Err(fail(format!(
                    "the container ended during its start ({status}); its log ends with:\n{}",
                    log_tail()
                )))
            }
            Err(other) => {
                return Err(fail(
                    other
                        .message("the box", READY_TIMEOUT, ".vibebox/logs/container.log")
                        .unwrap_or_default(),
                ))
            }
        }
        events.log(&format!(
            "box ready {:.2} s after its init started",
            start.elapsed().as_secs_f64()
        ));
        Ok(Box::new(machine))
    }
}

/// Reads the stage's reports until the container started: hands the NIC
/// to the network engine (or says why there is none).
fn wait_for_stage(
    sock: &OwnedFd,
    machine: &mut ContainerMachine,
    req: &StartRequest<'_>,
    events: &mut dyn StartEvents,
) -> Result<(), String> {
    let start = Instant::now();
    rustix::io::ioctl_fionbio(sock, true).map_err(|e| e.to_string())?;
    loop {
        if let Ok(Some(status)) = machine.child.0.try_wait() {
            return Err(format!("the container's stage ended ({status})"));
        }
        if start.elapsed() > STAGE_TIMEOUT {
            return Err(format!(
                "the container did not start within {} s",
                STAGE_TIMEOUT.as_secs()
            ));
        }
        let mut buf = [0u8; 4096];
        let (n, fd) = match vibebox_core::fdpass::recv(sock, &mut buf) {
            Ok((0, _)) => return Err("the container's stage closed its channel".into()),
            Ok(got) => got,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                // Woken by the stage's next message (or after a while, to
                // look at the child again).
                let mut fds = [rustix::event::PollFd::new(
                    sock,
                    rustix::event::PollFlags::IN,
                )];
                let wait = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                let _ = rustix::event::poll(&mut fds, Some(&wait));
                continue;
            }
            Err(e) => return Err(format!("the container's stage channel failed: {e}")),
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (word, rest) = msg.split_once(' ').unwrap_or((msg.as_str(), ""));
        match (word, fd) {
            ("nic", Some(fd)) => hand_to_engine(&req.network.frames_socket, fd)
                .map_err(|e| format!("cannot hand the box's NIC to the network engine: {e}"))?,
            ("nonic", _) => {
                let why = format!(
                    "the box has no network: {}",
                    vibebox_core::text::for_terminal(rest)
                );
                events.log(&why);
                events.progress(&why);
            }
            ("started", _) => return Ok(()),
            ("failed", _) => return Err(vibebox_core::text::for_terminal(rest)),
            _ => return Err("the container's stage sent an unknown message".into()),
        }
    }
}

/// Sends the NIC's packet socket to the engine (`SCM_RIGHTS`).
fn hand_to_engine(socket: &Path, fd: OwnedFd) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    vibebox_core::fdpass::send(&stream, b"nic", Some(fd.as_fd()))
}

/// A running container.
pub struct ContainerMachine {
    /// `unshare`, whose child is PID 1 of the box's pid namespace.
    child: Tied,
    /// The box init's control channel.
    control: UnixStream,
    /// The init was told to start sshd.
    sshd_started: bool,
    /// The box's cgroups (removed after `child`, once its processes are
    /// gone: fields drop in order).
    _group: Option<cgroup::V1Group>,
}

impl Machine for ContainerMachine {
    /// crun made the box's mounts before its init ran.
    fn settles_at_once(&self) -> bool {
        true
    }

    /// The box's init starts sshd when told (its start, ~10 ms of CPU, would
    /// otherwise come beside the first command).
    fn ssh_wanted(&mut self) {
        if !self.sshd_started {
            self.sshd_started = true;
            let _ = self.control.write_all(b"sshd\n");
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.0.try_wait() {
            Ok(Some(status)) => Some(format!("the container ended ({status})")),
            _ => None,
        }
    }

    fn shutdown(mut self: Box<Self>, events: &mut dyn StartEvents) {
        events.progress("powering the box off");
        let _ = self.control.write_all(b"poweroff\n");
        let start = Instant::now();
        while start.elapsed() < SHUTDOWN_TIMEOUT {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                events.log("the box powered off");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        events.log("the box did not power off in time; killed it");
        // Dropping `child` kills unshare, and with it the whole namespace.
    }

    fn suspend(self: Box<Self>, events: &mut dyn StartEvents) -> Result<(), RuntimeError> {
        self.shutdown(events);
        Err(fail(
            "the container runtime cannot suspend yet: the box was powered off (its files, in .vibebox/container/, stay)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_probe_is_remembered_only_while_what_it_depends_on_stays() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("crun");
        fs::write(&tool, "one build").unwrap();
        let ids = SubIds {
            uid: 100_000,
            gid: 100_000,
        };
        let tools = [tool.clone()];
        let key = probe_key(&tools, &ids);
        assert_eq!(key, probe_key(&tools, &ids));
        // Another build of a program (upgraded, reinstalled) is probed again,
        // and so are other subordinate ids.
        fs::write(&tool, "another build").unwrap();
        assert_ne!(key, probe_key(&tools, &ids));
        let key = probe_key(&tools, &ids);
        let other = SubIds {
            uid: 200_000,
            gid: 100_000,
        };
        assert_ne!(key, probe_key(&tools, &other));

        let rt = ContainerRuntime::new(Path::new("/nonexistent"), &dir.path().join("home"));
        assert_eq!(rt.remembered(&key), None);
        rt.remember(&key, "crun version 9: isolated");
        assert_eq!(
            rt.remembered(&key).as_deref(),
            Some("crun version 9: isolated")
        );
        assert_eq!(rt.remembered("another key"), None);
        // A damaged file is no verdict.
        fs::write(&rt.probe_cache, "{not json").unwrap();
        assert_eq!(rt.remembered(&key), None);
    }
}
