//! The supervisor: one background process per running session, the only owner
//! of QEMU and its helpers. It counts references (live control connections),
//! and shuts the machine down `auto_shutdown_ms` after the count reaches 0.
//!
//! Its children get `PR_SET_PDEATHSIG(SIGKILL)`, so a supervisor killed with
//! SIGKILL leaves no QEMU or virtiofsd behind.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vibebox_core::config::Config;
use vibebox_core::mounts::MountMode;
use vibebox_core::policy::Policy;
use vibebox_core::project::Project;
use vibebox_net::engine;
use vibebox_supervisor::protocol::{self, SessionState};
use vibebox_supervisor::server::Server;
use vibebox_vm::kvm::KvmVerdict;
use vibebox_vm::qemu::{Accel, Machine, Share, GUEST_NIC_MAC};
use vibebox_vm::virtiofs::ShareSpec;
use vibebox_vm::{disk, ssh, virtiofs};

use crate::context::Context;
use crate::plan::SessionPlan;

/// How long the guest may take from QEMU start to "ready" (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The longest line the supervisor reads from the guest's control port.
const CONTROL_LINE_MAX: usize = 4096;

/// Opens (creating it if needed) a file used only for `flock`.
pub fn open_lock_file(path: &Path) -> anyhow::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// A child process that is killed and reaped when dropped (and, through
/// PDEATHSIG, when the supervisor dies).
struct Tied(Child);

impl Drop for Tied {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` so that it dies with the supervisor.
fn spawn_tied(cmd: &mut Command, log: &Path) -> anyhow::Result<Tied> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .map(Tied)
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

/// The host's TSC frequency in kHz, for the guest's early clock under TCG.
fn tsc_khz() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = text
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// KVM usability, measured once per host boot and cached in `VIBEBOX_HOME`.
pub fn kvm_verdict(ctx: &Context) -> KvmVerdict {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = ctx.home.join("kvm-probe.json");
    if let Ok(text) = fs::read_to_string(&cache) {
        if let Ok((id, v)) = serde_json::from_str::<(String, KvmVerdict)>(&text) {
            if id == boot_id.trim() {
                return v;
            }
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("vibebox"));
    let v = vibebox_vm::kvm::probe(&exe, &["__kvm-probe"]);
    if let Ok(text) = serde_json::to_string(&(boot_id.trim(), &v)) {
        let _ = fs::create_dir_all(&ctx.home);
        let _ = fs::write(&cache, text);
    }
    v
}

/// A short private directory for the helpers' sockets (unix socket paths are
/// limited to 108 bytes, project paths are not): `$XDG_RUNTIME_DIR/vibebox`
/// when set, else `/tmp/vibebox-<uid>`, created 0700 and verified to be a
/// real directory this user owns that nobody else can write — never one
/// another user made.
pub fn run_root() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = rustix::process::getuid().as_raw();
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let root = match &xdg {
        Some(x) => x.join("vibebox"),
        None => std::env::temp_dir().join(format!("vibebox-{uid}")),
    };
    match fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot create {}", root.display())))
        }
    }
    let meta =
        fs::symlink_metadata(&root).with_context(|| format!("cannot read {}", root.display()))?;
    let problem = if meta.file_type().is_symlink() || !meta.is_dir() {
        Some("is not a directory (a symlink or a file)")
    } else if meta.uid() != uid {
        Some("belongs to another user")
    } else if meta.mode() & 0o077 != 0 {
        Some("can be read or written by other users")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(crate::error::hinted(
            format!(
                "the run directory {} {problem}; vibebox will not put its sockets there",
                root.display()
            ),
            match xdg {
                Some(_) => "check XDG_RUNTIME_DIR (it must be yours, mode 0700)".to_string(),
                None => format!(
                    "remove {} if it is not yours, or set XDG_RUNTIME_DIR to a private directory",
                    root.display()
                ),
            },
        ));
    }
    Ok(root)
}

/// The run directory of `session` (see [`run_root`]).
pub fn run_dir(session: &uuid::Uuid) -> anyhow::Result<PathBuf> {
    Ok(run_root()?.join(session.simple().to_string()))
}

fn wait_for(path: &Path, timeout: Duration, children: &mut [Tied]) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.0.try_wait() {
                bail!(
                    "a helper exited ({status}) before creating {}",
                    path.display()
                );
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "{} did not appear within {} s",
                path.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Starts the network engine on `socket`: it serves the QEMU that connects
/// there, forwards `ssh` and the exposed ports into the guest, and logs every
/// decision to `.vibebox/logs/network.log`.
fn start_engine(
    project: &Project,
    config: &Config,
    socket: &Path,
    ssh: std::net::TcpListener,
) -> anyhow::Result<()> {
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let path = project.logs_dir().join("network.log");
    let mut log = vibebox_net::log::RotatingLog::open(&path, vibebox_net::log::NETWORK_LOG_MAX)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // The host's SSH connections reach the guest's sshd through the engine too.
    let mut forwards = vec![(ssh, 22)];
    for (i, (host_port, guest_port)) in config.network.expose.iter().enumerate() {
        let l = std::net::TcpListener::bind(("127.0.0.1", *host_port)).with_context(|| {
            format!(
                "cannot expose guest port {guest_port} on 127.0.0.1:{host_port} (network.expose[{i}] in vibebox.toml)"
            )
        })?;
        forwards.push((l, *guest_port));
    }
    let engine = engine::Engine::new(
        engine::EngineConfig {
            policy: Policy::new(config.network.mode, config.network.entries.clone()),
            hosts: config.network.hosts.clone().into_iter().collect(),
            max_connections: config.network.max_connections as usize,
        },
        Box::new(move |e| {
            let _ = log.write_line(&e.to_line());
        }),
    )
    .with_forwards(forwards);
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let _ = engine.run(stream);
        }
    });
    Ok(())
}

/// The guest console log is rotated at this size (one older file is kept as
/// `console.log.1`): a guest printing forever cannot fill the host's disk.
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;

/// Writes what QEMU sends on `socket` (the guest console) to `log`, capped at
/// [`CONSOLE_LOG_MAX`] with one rotation. The log is opened without following
/// symlinks.
fn start_console_log(socket: &Path, log: &Path) -> anyhow::Result<()> {
    use std::io::Read;
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let log = log.to_path_buf();
    let open = |path: &Path| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    };
    let mut file = open(&log).with_context(|| format!("cannot open {}", log.display()))?;
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut written = 0u64;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            if written + n as u64 > CONSOLE_LOG_MAX {
                let _ = fs::rename(&log, log.with_extension("log.1"));
                match open(&log) {
                    Ok(f) => file = f,
                    Err(_) => return,
                }
                written = 0;
            }
            if file.write_all(&buf[..n]).is_err() {
                return;
            }
            written += n as u64;
        }
    });
    Ok(())
}

/// How long the shared SSH connection may take to open (key exchange runs
/// emulated under TCG).
const SSH_MASTER_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens the session's one SSH master connection before the session is
/// reported running: every client's ssh then multiplexes over it
/// (`ControlMaster=auto` finds its socket), so many clients at once never
/// race to open their own first connections (which sshd would drop).
fn start_ssh_master(project: &Project, run_dir: &Path, port: u16) -> anyhow::Result<Tied> {
    let control = run_dir.join("ssh-master");
    let _ = fs::remove_file(&control);
    let mut cmd = Command::new("ssh");
    // ssh keeps the first value of an option: these come before the shared ones.
    cmd.args(["-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N"])
        .args(ssh::options(&project.ssh_dir(), port, &control))
        .arg("vibecoder@127.0.0.1");
    let mut children = vec![spawn_tied(&mut cmd, &project.logs_dir().join("ssh.log"))?];
    wait_for(&control, SSH_MASTER_TIMEOUT, &mut children)
        .context("the shared SSH connection did not open (see .vibebox/logs/ssh.log)")?;
    Ok(children.remove(0))
}

/// The last lines of the guest console, for error messages: the guest
/// wrote them, so they are escaped for the terminal.
fn console_tail(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let text = vibebox_core::text::bytes_for_terminal(&bytes, true);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// Everything the running machine is made of.
struct Running {
    qemu: Tied,
    helpers: Vec<Tied>,
    control: UnixStream,
    run_dir: PathBuf,
}

impl Running {
    fn shutdown(mut self, log: &mut dyn FnMut(&str)) {
        log("shutting down: asking the guest to power off");
        let _ = self.control.write_all(b"poweroff\n");
        let start = Instant::now();
        let mut exited = false;
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.qemu.0.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            log("the guest did not power off within 20 s: killing QEMU");
        }
        // Dropping kills and reaps QEMU (if still there) and the helpers.
        drop(self.helpers);
        drop(self.qemu);
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

fn boot(
    ctx: &Context,
    project: &Project,
    config: &Config,
    plan: &SessionPlan,
    session: &uuid::Uuid,
    state: &Server,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<Running> {
    let detail = |s: &str| state.set_detail(s);
    let image = config.image.dir(&ctx.home);
    for f in ["disk.img", "vmlinux", "initrd.img", "manifest.toml"] {
        if !image.join(f).is_file() {
            bail!(
                "the base image `{}` is missing {f}; build it with `vibebox image build --name {}`",
                config.image,
                config.image
            );
        }
    }
    let manifest = vibebox_image::read_manifest(&image)?;
    if manifest.guest_version != vibebox_image::guest_version() {
        bail!(
            "the base image `{}` was built by another version of vibebox; rebuild it with `vibebox image build --name {}`",
            config.image,
            config.image
        );
    }
    let base_sha = manifest.sha256.get("disk.img").cloned().unwrap_or_default();
    let base_record = project.state_dir().join("disk.base");
    if project.disk_path().exists() {
        // The overlay only makes sense over the exact base it was made on.
        let recorded = fs::read_to_string(&base_record).unwrap_or_default();
        if recorded.trim() != base_sha {
            bail!(
                "the instance disk was made over another build of the base image `{}`; start afresh with `:new` or `vibebox delete` (files in the project directory are kept)",
                config.image
            );
        }
    }
    detail("preparing keys and the instance disk");
    let pubkey = ssh::ensure_keypair(&project.ssh_dir())?;
    if disk::ensure_overlay(
        &image.join("disk.img"),
        &project.disk_path(),
        config.disk_gb,
    )? {
        fs::write(&base_record, &base_sha)
            .with_context(|| format!("cannot write {}", base_record.display()))?;
        log("created the instance disk");
    }
    disk::check_overlay(&project.disk_path())?;
    let verdict = kvm_verdict(ctx);
    let accel = if verdict.usable {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    log(&format!("accelerator: {accel:?} ({})", verdict.reason));

    let run_dir = run_dir(session)?;
    let _ = fs::remove_dir_all(&run_dir);
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
    }
    let empty = run_dir.join("empty");
    fs::create_dir_all(&empty)?;

    let mut attempt = 1;
    loop {
        match start_machine(
            ctx, project, config, plan, accel, &pubkey, &run_dir, state, log,
        ) {
            Ok(running) => return Ok(running),
            Err(e) if e.downcast_ref::<EarlyExit>().is_some() && attempt < 3 => {
                // QEMU occasionally resets in the firmware with a shared-memory
                // backend (see FIELD-NOTES); a fresh start gets past it.
                log(&format!("attempt {attempt}: {e:#}; starting again"));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// QEMU exited before the guest was ready, within its first seconds.
#[derive(Debug)]
struct EarlyExit(String);

impl std::fmt::Display for EarlyExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EarlyExit {}

/// Starts virtiofsd for each mount and QEMU, hands the guest its
/// configuration and waits until it reports ready.
#[allow(clippy::too_many_arguments)]
fn start_machine(
    ctx: &Context,
    project: &Project,
    config: &Config,
    plan: &SessionPlan,
    accel: Accel,
    pubkey: &str,
    run_dir: &Path,
    state: &Server,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<Running> {
    let detail = |s: &str| state.set_detail(s);
    let image = config.image.dir(&ctx.home);
    let empty = run_dir.join("empty");
    // Sockets of an earlier attempt must not be mistaken for new ones.
    if let Ok(rd) = fs::read_dir(run_dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".sock") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    detail("starting virtiofsd for the mounts");
    let cache = ctx.host_home.join(".cache/vibebox");
    let virtiofsd = virtiofs::find_virtiofsd(&cache).ok_or_else(|| {
        anyhow::anyhow!(
            "virtiofsd is not installed; run scripts/install-deps (it builds it with cargo)"
        )
    })?;
    let mut helpers = Vec::new();
    let mut shares = Vec::new();
    let mut guest_mounts = Vec::new();
    let vlog = project.logs_dir().join("virtiofsd.log");
    for (i, m) in plan.shares.iter().enumerate() {
        let socket = run_dir.join(format!("fs{i}.sock"));
        if !m.host.is_dir() {
            bail!(
                "mount {} -> {}: the host path is not a directory",
                m.host.display(),
                m.guest
            );
        }
        let spec = ShareSpec {
            shared_dir: m.host.clone(),
            socket: socket.clone(),
            readonly: m.mode == MountMode::ReadOnly,
            guards: m.guards.iter().map(|g| (g.kind, g.path.clone())).collect(),
            guest_uid: 1000,
        };
        helpers.push(spawn_tied(
            &mut virtiofs::command(&virtiofsd, &spec, &empty),
            &vlog,
        )?);
        wait_for(&socket, Duration::from_secs(10), &mut helpers).with_context(|| {
            format!(
                "virtiofsd for {} did not start (see {})",
                m.host.display(),
                vlog.display()
            )
        })?;
        let tag = format!("m{i}");
        shares.push(Share {
            tag: tag.clone(),
            socket,
        });
        guest_mounts.push((tag, m.mode, m.guest.clone()));
    }

    detail(&format!(
        "booting the guest ({})",
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG emulation: KVM is not usable here",
        }
    ));
    let ssh_listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot open a local port for SSH")?;
    let ssh_port = ssh_listener.local_addr()?.port();
    let net_socket = run_dir.join("net.sock");
    start_engine(project, config, &net_socket, ssh_listener)?;
    let machine = Machine {
        accel,
        cpus: config.cpu_count,
        ram_mb: config.ram_mb,
        kernel: image.join("vmlinux"),
        initrd: image.join("initrd.img"),
        base_disk: image.join("disk.img"),
        overlay: project.disk_path(),
        tsc_khz: if accel == Accel::Tcg { tsc_khz() } else { None },
        net_socket,
        control_socket: run_dir.join("ctl.sock"),
        qmp_socket: run_dir.join("qmp.sock"),
        console_socket: run_dir.join("console.sock"),
        shares,
    };
    start_console_log(
        &machine.console_socket,
        &project.logs_dir().join("console.log"),
    )?;
    let mut qemu_cmd = Command::new("qemu-system-x86_64");
    qemu_cmd.args(machine.args());
    log(&format!("qemu-system-x86_64 {}", machine.args().join(" ")));
    let qemu = spawn_tied(&mut qemu_cmd, &project.logs_dir().join("qemu.log"))?;
    let qemu_started = Instant::now();
    let mut all = vec![qemu];
    wait_for(&machine.control_socket, Duration::from_secs(20), &mut all)
        .context("QEMU did not start (see .vibebox/logs/qemu.log)")?;
    let qemu = all.remove(0);
    // The socket file appears when QEMU binds it, a moment before it listens.
    let mut control = {
        let mut tries = 0;
        loop {
            match UnixStream::connect(&machine.control_socket) {
                Ok(c) => break c,
                Err(_) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(
                        anyhow::Error::new(e).context("cannot connect to the guest's control port")
                    )
                }
            }
        }
    };
    let mut msg = String::new();
    let mut key = pubkey.split_whitespace();
    msg.push_str(&format!(
        "key {} {}\n",
        key.next().unwrap_or_default(),
        key.next().unwrap_or_default()
    ));
    msg.push_str(&format!(
        "net {GUEST_NIC_MAC} {}/{} {gw} {gw}\n",
        engine::GUEST,
        engine::PREFIX,
        gw = engine::GATEWAY
    ));
    for (tag, mode, guest) in &guest_mounts {
        let mode = if *mode == MountMode::ReadOnly {
            "ro"
        } else {
            "rw"
        };
        msg.push_str(&format!("mount {tag} {mode} {}\n", b64(guest.as_bytes())));
    }
    msg.push_str(&format!("explain {}\n", b64(plan.explain.as_bytes())));
    msg.push_str("end\n");
    control.write_all(msg.as_bytes())?;
    let mut running = Running {
        qemu,
        helpers,
        control,
        run_dir: run_dir.to_path_buf(),
    };
    // Wait for "ready <host key>".
    running
        .control
        .set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut reader = BufReader::new(running.control.try_clone()?);
    let start = Instant::now();
    let mut line = String::new();
    loop {
        if let Ok(Some(status)) = running.qemu.0.try_wait() {
            let msg = format!(
                "QEMU exited during boot ({status}); the guest console ended with:\n{}\nQEMU said:\n{}",
                console_tail(&project.logs_dir().join("console.log")),
                console_tail(&project.logs_dir().join("qemu.log"))
            );
            if status.success() && qemu_started.elapsed() < Duration::from_secs(5) {
                return Err(EarlyExit(msg).into());
            }
            bail!(msg);
        }
        if start.elapsed() > BOOT_TIMEOUT {
            running.shutdown(log);
            bail!(
                "the guest did not become ready within {} s; see .vibebox/logs/console.log",
                BOOT_TIMEOUT.as_secs()
            );
        }
        // The guest's init lives on a disk the guest's root can rewrite: its
        // lines are bounded like any input from the box.
        let room = (CONTROL_LINE_MAX + 1).saturating_sub(line.len()) as u64;
        let read = std::io::Read::take(&mut reader, room).read_line(&mut line);
        if line.len() > CONTROL_LINE_MAX {
            running.shutdown(log);
            bail!(
                "the guest sent a control line longer than {CONTROL_LINE_MAX} bytes; see .vibebox/logs/console.log"
            );
        }
        match read {
            Ok(0) => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) if !line.ends_with('\n') => {}
            Ok(_) => {
                if let Some(rest) = line.trim().strip_prefix("ready ") {
                    let (kind, blob) = ssh::parse_host_key(rest)
                        .ok_or_else(|| anyhow::anyhow!("the guest sent an invalid host key"))?;
                    ssh::pin_host_key(&project.ssh_dir(), &kind, &blob)?;
                    break;
                }
                line.clear();
            }
            Err(_) => {}
        }
    }
    running.control.set_read_timeout(None)?;
    log(&format!(
        "guest ready after {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    detail("opening the shared SSH connection");
    let master = start_ssh_master(project, run_dir, ssh_port)?;
    running.helpers.push(master);
    state.update(|s| s.status.ssh_port = Some(ssh_port));
    Ok(running)
}

/// Runs the supervisor of the project at `dir` until the session stops.
///
/// The start plan the client checked arrives as JSON on standard input; the
/// supervisor never reads `vibebox.toml` itself.
pub fn run(ctx: &Context, dir: &Path) -> anyhow::Result<()> {
    let plan: SessionPlan = serde_json::from_reader(std::io::stdin().lock())
        .context("the supervisor needs the start plan on its standard input")?;
    let config = plan
        .config()
        .map_err(|p| anyhow::Error::new(p).context("the checked config does not parse"))?;
    let project = Project::at(dir);
    project.check_state_dir()?;
    fs::create_dir_all(project.logs_dir())?;
    let mut log = |m: &str| eprintln!("[{}] {m}", jiff::Timestamp::now());
    // One supervisor per session: the lock is held for the life of the process.
    let lock_path = project.state_dir().join("supervisor.lock");
    let lock = open_lock_file(&lock_path)?;
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        if protocol::status(&project.socket_path()).is_some() {
            log("another supervisor runs this session; exiting");
            return Ok(());
        }
        // The previous supervisor is shutting its machine down: wait for it.
        log("waiting for the previous supervisor to finish stopping");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .context("cannot lock the session")?;
    }
    let session = project
        .read_session_id()?
        .ok_or_else(|| anyhow::anyhow!("{} has no session", project.dir().display()))?;
    let socket = project.socket_path();
    let _ = fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    let grace = Duration::from_millis(config.auto_shutdown_ms);
    let state = Server::new(std::process::id(), grace);
    state.listen(listener);
    log(&format!(
        "supervising session {session} of {}",
        project.dir().display()
    ));
    let running = match boot(ctx, &project, &config, &plan, &session, &state, &mut log) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("{e:#}");
            log(&format!("boot failed: {msg}"));
            state.update(|s| {
                s.status.state = SessionState::Failed;
                s.status.detail = Some(msg);
            });
            // Give attached clients a moment to read why.
            std::thread::sleep(Duration::from_secs(2));
            let _ = fs::remove_file(&socket);
            if let Ok(d) = run_dir(&session) {
                let _ = fs::remove_dir_all(d);
            }
            return Err(e);
        }
    };
    state.set_state(SessionState::Running);
    let mut running = running;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = running.qemu.0.try_wait() {
            log(&format!("QEMU exited ({status})"));
            break;
        }
        if let Some(why) = state.should_stop() {
            log(why);
            break;
        }
    }
    // Clients that arrive now see "stopping" and wait for the socket to go.
    state.set_state(SessionState::Stopping);
    running.shutdown(&mut log);
    let _ = fs::remove_file(&socket);
    log("stopped");
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::b64;

    #[test]
    fn the_console_log_is_capped() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let log = dir.path().join("console.log");
        super::start_console_log(&socket, &log).unwrap();
        let mut qemu = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let line = [b'x'; 1023];
        for _ in 0..(super::CONSOLE_LOG_MAX as usize * 5 / 2 / 1024) {
            qemu.write_all(&line).unwrap();
            qemu.write_all(b"\n").unwrap();
        }
        drop(qemu);
        let total = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let start = std::time::Instant::now();
        while total(&log) == 0 && start.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(total(&log) <= super::CONSOLE_LOG_MAX);
        assert!(total(&log.with_extension("log.1")) <= super::CONSOLE_LOG_MAX);
        assert!(total(&log.with_extension("log.1")) > 0, "it rotated");
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"/home/vibecoder/a b"), "L2hvbWUvdmliZWNvZGVyL2EgYg==");
    }
}
