//! A client's side of a session: make sure it runs, hold a reference, open SSH.

use std::fs;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vibebox_core::config::Config;
use vibebox_core::mounts::project_guest_path;
use vibebox_core::project::Project;
use vibebox_vm::ssh;

use crate::context::Context;
use crate::error::hinted;
use crate::plan::SessionPlan;
use vibebox_supervisor::protocol::{self as control, Attachment, SessionState, Status};

/// A client's reference: plain, or followed by a thread (for notices).
pub enum Reference {
    /// Held, not read.
    Held(Attachment),
    /// Read by a thread that prints notices (held for its `Drop`).
    Followed(#[allow(dead_code)] control::Following),
    /// Released.
    None,
}

/// A live reference to a running session.
pub struct Attached {
    /// Held for as long as the client lives; dropping it releases the reference.
    pub reference: Reference,
    /// The status when the session became ready.
    pub status: Status,
    /// The session id.
    pub session: uuid::Uuid,
    /// Ask mode: the questions this terminal answers, and the supervisor's
    /// socket the answers go to.
    pub questions: Option<(crate::asking::Questions, std::path::PathBuf)>,
}

/// Builds the base image if the config's image does not exist yet.
pub fn ensure_image(ctx: &Context, config: &Config) -> anyhow::Result<()> {
    let dir = config.image.dir(&ctx.home);
    if dir.join("manifest.toml").is_file() {
        return Ok(());
    }
    eprintln!(
        "vibebox: the base image `{}` does not exist yet: building it now (once; about 1-3 minutes)",
        config.image
    );
    crate::commands::image::build(ctx, &config.image, None)
}

fn spawn_supervisor(ctx: &Context, project: &Project, plan: &SessionPlan) -> anyhow::Result<()> {
    fs::create_dir_all(project.logs_dir())?;
    let log = project.logs_dir().join("supervisor.log");
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let exe = std::env::current_exe().context("cannot find the vibebox executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("__supervise")
        .arg(project.dir())
        .env("VIBEBOX_HOME", &ctx.home)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from the
    // client's session and terminal so it outlives the client.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().context("cannot start the supervisor")?;
    // The plan the client checked: the supervisor never reads the config file.
    let text = serde_json::to_vec(plan)?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(&text)
            .context("cannot hand the start plan to the supervisor")?;
    }
    Ok(())
}

/// What a client needs of a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Commands (the exec agent): ready as soon as the box runs.
    Commands,
    /// SSH (terminals, `ssh-config`): the session's shared SSH connection,
    /// which opens while the box already runs.
    Ssh,
}

/// Starts the session's supervisor if none answers, then attaches to it and
/// waits until the machine is running (and, for `Need::Ssh`, its shared SSH
/// connection is open). Progress goes to stderr.
pub fn ensure_running(
    ctx: &Context,
    project: &Project,
    config: &Config,
    session: uuid::Uuid,
    need: Need,
    plan: &dyn Fn() -> anyhow::Result<SessionPlan>,
) -> anyhow::Result<Attached> {
    ensure_image(ctx, config)?;
    let socket = project.socket_path();
    let deadline = Instant::now() + Duration::from_secs(180);
    let log = project.logs_dir().join("supervisor.log");
    let mut last_detail = None;
    'start: loop {
        if Instant::now() > deadline {
            bail!(
                "the session did not start within 180 s; see {}",
                log.display()
            );
        }
        match control::status(&socket) {
            Some(s) if s.state == SessionState::Stopping => {
                // The previous machine is shutting down; a new one starts after.
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            Some(_) => {}
            None => {
                // One client at a time decides whether to start a supervisor.
                let lock_path = project.state_dir().join("spawn.lock");
                let lock = vibebox_supervisor::supervise::open_lock_file(&lock_path)
                    .map_err(crate::runtime::supervisor_error)?;
                rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
                    .context("cannot lock the session")?;
                if control::status(&socket).is_none() {
                    spawn_supervisor(ctx, project, &plan()?)?;
                    while control::status(&socket).is_none() {
                        if Instant::now() > deadline {
                            bail!("the supervisor did not answer; see {}", log.display());
                        }
                        // It listens within milliseconds; the box may be
                        // ready soon after.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                continue;
            }
        }
        let Ok(mut attachment) = Attachment::connect_with(&socket, false, need == Need::Ssh) else {
            continue;
        };
        loop {
            let Some(status) = attachment.next_status() else {
                // The supervisor went away (it was stopping): start again.
                continue 'start;
            };
            match status.state {
                SessionState::Running if need == Need::Ssh && status.ssh_port.is_none() => {
                    if let Some(why) = status.ssh_error {
                        return Err(hinted(
                            format!("session {session} runs, but {why}"),
                            "`vibebox exec -- CMD` still runs commands; `vibebox stop --shutdown` and a new start try SSH again".to_string(),
                        ));
                    }
                    let detail = Some("opening the shared SSH connection".to_string());
                    if detail != last_detail {
                        eprintln!("vibebox: opening the shared SSH connection");
                        last_detail = detail;
                    }
                }
                SessionState::Running => {
                    return Ok(Attached {
                        reference: Reference::Held(attachment),
                        status,
                        session,
                        questions: None,
                    })
                }
                SessionState::Failed => {
                    return Err(hinted(
                        format!(
                            "session {session} could not start: {}",
                            status.detail.unwrap_or_default()
                        ),
                        format!("see the logs in {}", project.logs_dir().display()),
                    ))
                }
                SessionState::Stopping => continue 'start,
                SessionState::Starting => {
                    if status.detail.is_some() && status.detail != last_detail {
                        eprintln!("vibebox: {}", status.detail.clone().unwrap_or_default());
                        last_detail = status.detail;
                    }
                }
            }
        }
    }
}

impl Attached {
    /// Where the project is in the box: where it was when the box started
    /// (the directory may have moved on the host since).
    pub fn guest_dir(&self, project: &Project) -> String {
        self.status
            .guest_dir
            .clone()
            .unwrap_or_else(|| project_guest_path(project.dir()))
    }

    /// From now on, tells the person at this terminal (one line on stderr)
    /// when a port of the box becomes reachable from the host, or stops
    /// being; the ports already forwarded are told at once. When the box is
    /// in ask mode, this terminal also answers its questions (the ssh that
    /// [`run_shell`] and [`run_ssh_tty`] start then gets the keyboard through
    /// [`crate::asking`]).
    pub fn follow_at_terminal(&mut self, project: &Project) {
        let mut seen = self.status.ports.clone();
        for f in &seen {
            eprintln!("vibebox: {}", crate::commands::ports::describe(f));
        }
        let answering = self.status.ask && std::io::stderr().is_terminal();
        let socket = project.socket_path();
        // A new reference is taken before the old one goes: the count never
        // drops to zero in between.
        let attachment = if answering {
            Attachment::connect_as(&socket, true).ok()
        } else {
            None
        };
        let questions = crate::asking::Questions::default();
        let a = match (
            attachment,
            std::mem::replace(&mut self.reference, Reference::None),
        ) {
            (Some(new), _) => {
                self.questions = Some((questions.clone(), socket));
                new
            }
            (None, Reference::Held(old)) => old,
            (None, other) => {
                self.reference = other;
                return;
            }
        };
        let follow = a.follow(move |status| {
            for f in status.ports.iter().filter(|f| !seen.contains(f)) {
                // The terminal may be in raw mode (an ssh session): \r\n.
                eprint!("\r\nvibebox: {}\r\n", crate::commands::ports::describe(f));
            }
            for f in seen.iter().filter(|f| f.host.is_some() && !status.ports.iter().any(|n| n.guest == f.guest)) {
                eprint!("\r\nvibebox: port {} in the box is closed; 127.0.0.1:{} is no longer forwarded\r\n", f.guest, f.host.unwrap_or_default());
            }
            seen = status.ports;
            questions.set(status.questions);
        });
        match follow {
            Ok(following) => self.reference = Reference::Followed(following),
            Err(_) => self.questions = None,
        }
    }
}

/// The ssh command to the guest of `project` (add `-t`/`-T` and the command).
pub fn ssh_command(project: &Project, session: &uuid::Uuid, port: u16) -> Command {
    let control = vibebox_supervisor::rundir::run_dir(session)
        .map(|d| d.join("ssh-master"))
        .unwrap_or_else(|_| "none".into());
    let mut cmd = Command::new("ssh");
    cmd.args(ssh::options(&project.ssh_dir(), port, &control));
    cmd
}

pub use vibebox_core::text::shell_quote;

/// An ssh that runs `line` (a shell command line) in the guest's project
/// directory, with a terminal (`-t`) or without (`-T`).
fn guest_ssh(
    project: &Project,
    attached: &Attached,
    tty: bool,
    line: &str,
) -> anyhow::Result<Command> {
    let port = attached
        .status
        .ssh_port
        .ok_or_else(|| anyhow::anyhow!("the supervisor did not report an SSH port"))?;
    let dir = shell_quote(&attached.guest_dir(project));
    let mut cmd = ssh_command(project, &attached.session, port);
    cmd.arg(if tty { "-t" } else { "-T" })
        .arg("vibecoder@127.0.0.1")
        .arg(format!("cd {dir} && {line}"));
    Ok(cmd)
}

/// Runs `cmd` (an ssh) to its end: with the keyboard relayed when this
/// terminal answers ask mode's questions.
fn run_at_terminal(attached: &Attached, cmd: Command) -> anyhow::Result<i32> {
    match &attached.questions {
        Some((questions, socket)) => crate::asking::run(cmd, socket.clone(), questions.clone()),
        None => exit_code(cmd),
    }
}

fn exit_code(mut cmd: Command) -> anyhow::Result<i32> {
    let status = cmd
        .status()
        .context("cannot run ssh; install openssh-client")?;
    Ok(status.code().unwrap_or(255))
}

/// Runs `line` (a shell command line) in the guest's project directory
/// through the box's exec agent (no terminal; this process's standard
/// streams are the command's). Returns its exit code.
pub fn run_command(project: &Project, attached: &Attached, line: &str) -> anyhow::Result<i32> {
    let port = attached
        .status
        .agent_port
        .ok_or_else(|| anyhow::anyhow!("the supervisor did not report the exec agent's port"))?;
    let token = ssh::read_agent_token(&project.ssh_dir()).ok_or_else(|| {
        hinted(
            format!(
                "cannot read the session's agent token in {}",
                ssh::agent_token_path(&project.ssh_dir()).display()
            ),
            "`vibebox stop --shutdown` and start again: the next start makes a new one".to_string(),
        )
    })?;
    let dir = shell_quote(&attached.guest_dir(project));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    vibebox_agent::client::run(addr, &token, &format!("cd {dir} && {line}")).map_err(|e| {
        let hint = match e {
            vibebox_agent::client::AgentError::Closed
            | vibebox_agent::client::AgentError::Refused(_) => {
                "the box's root can stop or replace its exec agent (/sbin/vibebox-agent); `vibebox stop --shutdown` and a new start bring it back (terminals use SSH and still work)"
            }
            _ => "see .vibebox/logs/supervisor.log and .vibebox/logs/network.log",
        };
        hinted(e.to_string(), hint.to_string())
    })
}

/// Runs an interactive login shell in the guest's project directory (on a
/// terminal when stdin is one) over SSH. Returns the exit code.
pub fn run_shell(project: &Project, attached: &Attached) -> anyhow::Result<i32> {
    if std::io::stdin().is_terminal() {
        run_at_terminal(
            attached,
            guest_ssh(project, attached, true, "exec bash -l")?,
        )
    } else {
        exit_code(guest_ssh(project, attached, false, "exec bash -l")?)
    }
}

/// Runs `line` (a shell command line) in the guest's project directory on a
/// terminal (`ssh -t`); returns its exit code.
pub fn run_ssh_tty(project: &Project, attached: &Attached, line: &str) -> anyhow::Result<i32> {
    run_at_terminal(attached, guest_ssh(project, attached, true, line)?)
}

/// Runs `line` (a shell command line) in the guest's project directory with
/// no terminal and returns its exit code and at most `limit` bytes of what
/// it printed (the box decides what that is: treat it as hostile).
pub fn ssh_capture(
    project: &Project,
    attached: &Attached,
    line: &str,
    limit: u64,
) -> anyhow::Result<(i32, Vec<u8>)> {
    use std::io::Read;
    let mut child = guest_ssh(project, attached, false, line)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run ssh; install openssh-client")?;
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let mut stdout = stdout.take(limit);
        stdout
            .read_to_end(&mut out)
            .context("cannot read from the box")?;
        // What is left is not read: a box that goes on writing makes ssh
        // end (SIGPIPE), not the host wait.
        drop(stdout);
    }
    let status = child.wait().context("cannot wait for ssh")?;
    Ok((status.code().unwrap_or(255), out))
}
