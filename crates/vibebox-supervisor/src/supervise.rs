//! The supervisor: one background process per running session, the only owner
//! of QEMU and its helpers. It counts references (live control connections),
//! and shuts the machine down `auto_shutdown_ms` after the count reaches 0.
//!
//! Its children get `PR_SET_PDEATHSIG(SIGKILL)`, so a supervisor killed with
//! SIGKILL leaves no QEMU or virtiofsd behind.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vibebox_core::config::Config;
use vibebox_core::policy::Policy;
use vibebox_core::project::Project;
use vibebox_core::runtime::{Machine, NetworkEndpoint, StartEvents, StartRequest};
use vibebox_net::engine;
use vibebox_vm::process::{spawn_tied, Tied};
use vibebox_vm::qemu::GUEST_NIC_MAC;
use vibebox_vm::ssh;

use vibebox_core::plan::SessionPlan;

use crate::error::{Because, SupervisorError};
use crate::protocol::{self, SessionState};
use crate::rundir::run_dir;
use crate::server::{Server, Stop};
use vibebox_core::config::OnIdle;

/// The supervisor's reports while a runtime starts or stops the machine:
/// progress goes to the attached clients, log lines to supervisor.log.
struct Events<'a, 'l> {
    server: &'a Server,
    log: &'l mut dyn FnMut(&str),
}

impl StartEvents for Events<'_, '_> {
    fn progress(&mut self, step: &str) {
        self.server.set_detail(step);
    }
    fn log(&mut self, line: &str) {
        (self.log)(line);
    }
}

/// Opens (creating it if needed) a file used only for `flock`.
pub fn open_lock_file(path: &Path) -> Result<fs::File, SupervisorError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .because(|| format!("cannot open {}", path.display()))
}

/// Starts the network engine: it serves the QEMU that connects to
/// `network.socket` (frames on a stream) and the frame device a runtime sends
/// to `network.frames_socket` (a TAP or packet socket, by `SCM_RIGHTS`),
/// forwards `ssh` and the exposed ports into the guest, and logs every
/// decision to `.vibebox/logs/network.log`.
#[allow(clippy::too_many_arguments)]
fn start_engine(
    project: &Project,
    config: &Config,
    network: &NetworkEndpoint,
    ssh: std::net::TcpListener,
    agent: std::net::TcpListener,
    dynamic: engine::DynamicForwards,
    live: engine::LivePolicy,
    asks: vibebox_net::ask::Asks,
) -> Result<(), SupervisorError> {
    let streams = UnixListener::bind(&network.socket)
        .because(|| format!("cannot listen on {}", network.socket.display()))?;
    let frames = UnixListener::bind(&network.frames_socket)
        .because(|| format!("cannot listen on {}", network.frames_socket.display()))?;
    let path = project.logs_dir().join("network.log");
    let log = vibebox_net::log::RotatingLog::open(&path, vibebox_net::log::NETWORK_LOG_MAX)
        .because(|| format!("cannot open {}", path.display()))?;
    // The host's SSH connections and commands reach the guest's sshd and
    // exec agent through the engine too.
    let mut forwards = vec![(ssh, 22), (agent, vibebox_agent::proto::PORT)];
    for (i, (host_port, guest_port)) in config.network.expose.iter().enumerate() {
        let l = std::net::TcpListener::bind(("127.0.0.1", *host_port)).because(|| {
            format!(
                "cannot expose guest port {guest_port} on 127.0.0.1:{host_port} (network.expose[{i}] in vibebox.toml)"
            )
        })?;
        forwards.push((l, *guest_port));
    }
    let cfg = engine::EngineConfig {
        policy: Policy::new(config.network.mode, config.network.entries.clone()),
        hosts: config.network.hosts.clone().into_iter().collect(),
        max_connections: config.network.max_connections as usize,
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(log));
    // One engine per machine that connects (a start that is retried
    // connects again), one at a time.
    let new_engine = std::sync::Arc::new(move || -> Option<engine::Engine> {
        let forwards = forwards
            .iter()
            .map(|(l, p)| l.try_clone().map(|l| (l, *p)))
            .collect::<std::io::Result<Vec<_>>>()
            .ok()?;
        let log = log.clone();
        Some(
            engine::Engine::new(
                cfg.clone(),
                Box::new(move |e| {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = log.write_line(&e.to_line());
                }),
            )
            .with_forwards(forwards)
            .with_dynamic_forwards(dynamic.clone())
            .with_live_policy(live.clone())
            .with_asks(asks.clone()),
        )
    });
    let make = new_engine.clone();
    std::thread::spawn(move || {
        for stream in streams.incoming() {
            let Ok(stream) = stream else { break };
            let Some(engine) = make() else { break };
            let _ = engine.run(stream);
        }
    });
    std::thread::spawn(move || {
        for stream in frames.incoming() {
            let Ok(stream) = stream else { break };
            let Ok((_, Some(fd))) = vibebox_core::fdpass::recv(&stream, &mut [0u8; 16]) else {
                continue;
            };
            let Ok(link) = vibebox_net::link::PacketLink::new(fd) else {
                continue;
            };
            let Some(engine) = new_engine() else { break };
            let _ = engine.run_link(link);
        }
    });
    Ok(())
}

/// The control socket this supervisor made, known by its inode: a path
/// alone may name another session's socket by the time it is removed.
struct SocketFile(Option<(u64, u64)>);

impl SocketFile {
    fn at(path: &Path) -> SocketFile {
        use std::os::unix::fs::MetadataExt;
        SocketFile(fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino())))
    }

    /// Removes `path` if it is still this socket.
    fn remove(&self, path: &Path) {
        if self.0.is_some() && SocketFile::at(path).0 == self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// How long the shared SSH connection may take to open (key exchange runs
/// emulated under TCG).
const SSH_MASTER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a machine that settles at once waits before it opens the shared
/// SSH connection when no client asked for it (one that does gets it at once).
const SSH_DEFERRED: Duration = Duration::from_secs(1);

/// The session's one SSH master connection, opened while the session
/// already runs (its commands go through the exec agent): every client's ssh
/// multiplexes over it (`ControlMaster=auto` finds its socket), and clients
/// that need SSH wait until the status names its port, so many clients at
/// once never race to open their own first connections (which sshd would
/// drop). Polled from the supervisor's main thread: its ssh is tied to the
/// thread that starts it (`PR_SET_PDEATHSIG`).
struct SshMaster {
    /// The host port forwarded to the guest's sshd.
    port: u16,
    control: PathBuf,
    log: PathBuf,
    command: Vec<std::ffi::OsString>,
    child: Option<Tied>,
    since: std::time::Instant,
    retry_at: std::time::Instant,
    /// The pause before the next try (from 10 ms, for an sshd that is
    /// starting — a container's starts when the connection is first tried —,
    /// doubling up to 2 s: one that refuses for good does not fill the log).
    pause: Duration,
}

impl SshMaster {
    fn new(project: &Project, run_dir: &Path, port: u16) -> SshMaster {
        let control = run_dir.join("ssh-master");
        let _ = fs::remove_file(&control);
        // ssh keeps the first value of an option: these come before the shared ones.
        let mut command: Vec<std::ffi::OsString> =
            ["-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N"]
                .iter()
                .map(Into::into)
                .collect();
        command.extend(
            ssh::options(&project.ssh_dir(), port, &control)
                .into_iter()
                .map(Into::into),
        );
        command.push("vibecoder@127.0.0.1".into());
        let now = std::time::Instant::now();
        SshMaster {
            port,
            control,
            log: project.logs_dir().join("ssh.log"),
            command,
            child: None,
            since: now,
            retry_at: now,
            pause: Duration::from_millis(10),
        }
    }

    /// Whether the connection opened (`Some(Ok)`), cannot (`Some(Err)`), or
    /// is still on its way. A first try that finds sshd not listening yet
    /// (it starts while the box already runs commands) is tried again.
    fn poll(&mut self) -> Option<Result<Tied, SupervisorError>> {
        let now = std::time::Instant::now();
        if let Some(child) = &mut self.child {
            if self.control.exists() {
                return self.child.take().map(Ok);
            }
            if let Ok(Some(_)) = child.0.try_wait() {
                self.child = None;
                self.retry_at = now + self.pause;
                self.pause = (self.pause * 2).min(Duration::from_secs(2));
            }
        }
        if now.duration_since(self.since) > SSH_MASTER_TIMEOUT {
            self.child = None;
            return Some(Err(SupervisorError::new(
                "the shared SSH connection did not open (see .vibebox/logs/ssh.log)".to_string(),
            )));
        }
        if self.child.is_none() && now >= self.retry_at {
            let mut cmd = Command::new("ssh");
            cmd.args(&self.command);
            match spawn_tied(&mut cmd, &self.log) {
                Ok(c) => self.child = Some(c),
                Err(e) => return Some(Err(e.into())),
            }
        }
        None
    }
}

/// What runs when a session stops and its config says `save_on_idle`:
/// saves the workspace of the plan's project, telling the log how it went.
#[derive(Clone)]
pub struct SaveHook(pub std::sync::Arc<SaveFn>);

/// The function of a [`SaveHook`]: the plan, and where to log.
pub type SaveFn = dyn Fn(&SessionPlan, &mut dyn FnMut(&str)) + Send + Sync;

impl std::fmt::Debug for SaveHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaveHook")
    }
}

/// Where a supervisor finds what it needs on the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// `VIBEBOX_HOME`.
    pub vibebox_home: PathBuf,
    /// The host user's home.
    pub host_home: PathBuf,
    /// The vibebox executable (runs the guest half of the KVM probe).
    pub probe_exe: PathBuf,
    /// Saves the workspace before the box stops (`[supervisor] save_on_idle`).
    pub save: Option<SaveHook>,
}

/// Runs the supervisor of the session of `plan` until the session stops:
/// the control server, the network engine, the machine (through its
/// runtime), the shared SSH connection, the lease. The plan is what the
/// client checked; the supervisor never reads `vibebox.toml` itself.
pub fn supervise(plan: &SessionPlan, host: &Host) -> Result<(), SupervisorError> {
    let config = plan
        .config()
        .because(|| "the checked config does not parse".to_string())?;
    let project = plan.project();
    project
        .check_state_dir()
        .because(|| "the project cannot be used".to_string())?;
    fs::create_dir_all(project.logs_dir())
        .because(|| format!("cannot create {}", project.logs_dir().display()))?;
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
            .because(|| "cannot lock the session".to_string())?;
    }
    let session = project
        .read_session_id()
        .because(|| "cannot read the session".to_string())?
        .ok_or_else(|| {
            SupervisorError::new(format!("{} has no session", project.dir().display()))
        })?;
    let socket = project.socket_path();
    let _ = fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).because(|| format!("cannot listen on {}", socket.display()))?;
    let ours = SocketFile::at(&socket);
    let grace = Duration::from_millis(config.auto_shutdown_ms);
    let state = Server::new(std::process::id(), grace);
    state.listen(listener);
    log(&format!(
        "supervising session {session} of {} (runtime: {})",
        project.dir().display(),
        plan.runtime
    ));
    let run_dir = run_dir(&session)?;
    let _ = fs::remove_dir_all(&run_dir);
    let dynamic = engine::DynamicForwards::default();
    let live = engine::LivePolicy::default();
    let started = (|| -> Result<(Box<dyn Machine>, SshMaster), SupervisorError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&run_dir)
            .because(|| format!("cannot create {}", run_dir.display()))?;
        let runtime = crate::select::by_name(&plan.runtime, &host.vibebox_home, &host.probe_exe)
            .ok_or_else(|| {
                SupervisorError::new(format!(
                    "the plan names no known runtime ({:?})",
                    plan.runtime
                ))
            })?;
        let ssh_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .because(|| "cannot open a local port for SSH".to_string())?;
        let ssh_port = ssh_listener.local_addr()?.port();
        let agent_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .because(|| "cannot open a local port for the exec agent".to_string())?;
        let agent_port = agent_listener.local_addr()?.port();
        let network = NetworkEndpoint {
            socket: run_dir.join("net.sock"),
            frames_socket: run_dir.join("net-frames.sock"),
            guest_mac: GUEST_NIC_MAC.to_string(),
            guest_address: engine::GUEST,
            prefix: engine::PREFIX,
            gateway: engine::GATEWAY,
        };
        start_engine(
            &project,
            &config,
            &network,
            ssh_listener,
            agent_listener,
            dynamic.clone(),
            live.clone(),
            state.asks(),
        )?;
        let request = StartRequest {
            plan,
            config: &config,
            vibebox_home: &host.vibebox_home,
            host_home: &host.host_home,
            run_dir: &run_dir,
            network: &network,
        };
        let mut events = Events {
            server: &state,
            log: &mut log,
        };
        let mut machine = runtime.start(&request, &mut events)?;
        // The first try at the shared SSH connection, while the guest mounts
        // its shares (where there is nothing to wait for, see the loop).
        let mut master = SshMaster::new(&project, &run_dir, ssh_port);
        if !machine.settles_at_once() {
            machine.ssh_wanted();
            let _ = master.poll();
        }
        if let Err(e) = machine.settle() {
            machine.shutdown(&mut events);
            return Err(e.into());
        }
        let guest_dir = vibebox_core::mounts::project_guest_path(project.dir());
        let ask = config.network.mode == vibebox_core::policy::NetworkMode::Ask;
        state.update(|s| {
            s.status.agent_port = Some(agent_port);
            s.status.guest_dir = Some(guest_dir);
            s.status.ask = ask;
        });
        Ok((machine, master))
    })();
    let (mut machine, mut opening) = match started {
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
            ours.remove(&socket);
            let _ = fs::remove_dir_all(&run_dir);
            return Err(e);
        }
    };
    state.set_state(SessionState::Running);
    // A machine that was ready at once (a container: the first command
    // follows within milliseconds) opens the shared SSH connection when a
    // client waits for it, or after a moment: its start (ssh, and sshd's
    // for the connection) would take the CPU the first command needs.
    let defer_ssh = machine.settles_at_once();
    let running_since = std::time::Instant::now();
    let ssh_port = opening.port;
    // `Some(None)` once the shared SSH connection could not open.
    let mut master: Option<Option<Tied>> = None;
    let guest = crate::guest::GuestShell::new(&project.ssh_dir(), ssh_port, &run_dir);
    let mut held_by_terminal = false;
    let stop_watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let whereabouts =
        crate::moves::follow_moves(&project, &host.vibebox_home, stop_watching.clone());
    let here = whereabouts.here.clone();
    state.on_reload(crate::reload::reloader(
        &plan.config_file,
        &config,
        live,
        state.clone(),
    ));
    state.on_answer(crate::ask::answerer(
        state.asks(),
        crate::ask::Keep {
            config_file: plan.config_file.clone(),
            project_dir: project.dir().to_path_buf(),
            vibebox_home: host.vibebox_home.clone(),
            host_home: host.host_home.clone(),
            session,
        },
    ));
    let port_watch = crate::ports::PortWatch {
        guest: guest.clone(),
        server: state.clone(),
        forwards: dynamic.clone(),
        fixed: config.network.expose.clone(),
        auto: config.network.auto_expose,
        stop: stop_watching.clone(),
        log: std::sync::Arc::new(|m: &str| eprintln!("[{}] {m}", jiff::Timestamp::now())),
    };
    let mut port_watch = Some(port_watch);
    // Suspend (the default) or power off, as asked or as `on_idle` says;
    // `None` once the machine ended by itself.
    let mut seen_at = project.dir().to_path_buf();
    let suspend = loop {
        // Short turns while the shared SSH connection waits for a client to
        // want it, or opens (a client waits for it).
        let waiting = master.is_none()
            && defer_ssh
            && running_since.elapsed() < SSH_DEFERRED
            && !state.ssh_wanted();
        std::thread::sleep(Duration::from_millis(if master.is_none() {
            5
        } else {
            100
        }));
        if master.is_none() && !waiting {
            machine.ssh_wanted();
            match opening.poll() {
                Some(Ok(m)) => {
                    log("the shared SSH connection is open");
                    master = Some(Some(m));
                    state.update(|s| s.status.ssh_port = Some(ssh_port));
                    // What the box listens on is learned over SSH.
                    if let Some(w) = port_watch.take() {
                        w.start();
                    }
                }
                Some(Err(e)) => {
                    log(&format!("{e:#}"));
                    master = Some(None);
                    let why = e.to_string();
                    state.update(|s| s.status.ssh_error = Some(why));
                }
                None => {}
            }
        }
        let ssh_open = matches!(master, Some(Some(_)));
        let now_at = here.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if now_at != seen_at {
            machine.moved(&now_at);
            seen_at = now_at;
        }
        if let Some(how) = machine.exited() {
            log(&how);
            break None;
        }
        if whereabouts.gone.load(std::sync::atomic::Ordering::Relaxed) {
            // Nothing to keep it for, and nowhere to save it.
            log("the project directory was deleted: powering the box off");
            machine.project_deleted();
            break Some(false);
        }
        // Copies wait for the SSH connection (or its failure): the guest
        // syncs its disk over it first.
        for job in if master.is_some() {
            state.take_copies()
        } else {
            Vec::new()
        } {
            // What the guest wrote is on its disk before the pause.
            if ssh_open {
                let _ = guest.run("sync", Duration::from_secs(60));
            }
            let started = std::time::Instant::now();
            let copied = match &job.memory {
                Some(dir) => {
                    use std::os::unix::fs::DirBuilderExt;
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
                }
                None => Ok(()),
            }
            .and_then(|()| {
                machine
                    .copy_disk(&job.dest, job.memory.as_deref())
                    .map_err(|e| e.to_string())
            });
            log(&match &copied {
                Ok(()) => format!(
                    "copied the {} for a fork ({:.2} s paused)",
                    if job.memory.is_some() {
                        "disk and memory"
                    } else {
                        "disk"
                    },
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => format!("cannot copy the disk for a fork: {e}"),
            });
            let _ = job.done.send(copied);
        }
        match state.should_stop() {
            Some(Stop::Requested { shutdown }) => {
                log(if shutdown {
                    "power-off requested"
                } else {
                    "stop requested"
                });
                break Some(!shutdown);
            }
            Some(Stop::Idle) if ssh_open && guest.terminals_running() => {
                // A detached terminal (`vibebox run -d`) keeps the box up.
                if !held_by_terminal {
                    log("no clients, but a terminal in the box runs: staying up");
                    held_by_terminal = true;
                }
                state.update(|s| s.lease.renew(std::time::Instant::now()));
            }
            Some(Stop::Idle) => {
                log("no clients for the whole grace period");
                break Some(config.on_idle == OnIdle::Suspend);
            }
            None => {}
        }
    };
    // Clients that arrive now see "stopping" and wait for the socket to go.
    stop_watching.store(true, std::sync::atomic::Ordering::Relaxed);
    state.set_state(SessionState::Stopping);
    for job in state.take_copies() {
        let _ = job.done.send(Err("the box is stopping".into()));
    }
    if config.save_on_idle {
        if let Some(hook) = &host.save {
            log("saving the workspace before the box stops (save_on_idle)");
            (hook.0)(plan, &mut log);
        }
    }
    drop(master);
    let mut events = Events {
        server: &state,
        log: &mut log,
    };
    if suspend == Some(true) {
        if let Err(e) = machine.suspend(&mut events) {
            events.log(&e.to_string());
        }
    } else {
        machine.shutdown(&mut events);
    }
    let _ = fs::remove_dir_all(&run_dir);
    // The project may have moved since (the socket file moved with it), or
    // been deleted, and another project made at its path since: only our
    // own socket file goes.
    ours.remove(&socket);
    let now_at = Project::at(&here.lock().unwrap_or_else(|e| e.into_inner()));
    ours.remove(&now_at.socket_path());
    log("stopped");
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_supervisors_socket_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.sock");
        // Bound sockets keep their inodes: the number is not reused while
        // this listener lives (as in a supervisor).
        let _ours_listening = UnixListener::bind(&path).unwrap();
        let ours = SocketFile::at(&path);
        // The project was deleted and made again: another supervisor's
        // socket is at the same path now.
        fs::remove_file(&path).unwrap();
        let _theirs_listening = UnixListener::bind(&path).unwrap();
        ours.remove(&path);
        assert!(path.exists(), "another session's socket was removed");
        SocketFile::at(&path).remove(&path);
        assert!(!path.exists(), "its own socket stays");
        // A socket never made removes nothing.
        fs::write(&path, "").unwrap();
        SocketFile::at(&dir.path().join("none")).remove(&path);
        assert!(path.exists());
    }
}
