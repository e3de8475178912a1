//! vibebox-agent: runs `vibebox exec`'s commands in the box without an SSH
//! connection (a new SSH connection costs the emulated guest ~0.3 s of key
//! exchange and process start; this costs it a fork).
//!
//! Started by vibebox-init as the box's root; listens on [`proto::PORT`]
//! (reached only through the network engine's forward from a host loopback
//! port). Each connection names the session's token (the host gave it to
//! vibebox-init, which keeps it in `/run/vibebox/agent-token`, readable by
//! root only) and a shell command line, which runs as `vibecoder` the way
//! sshd runs a command: the user's shell with `-c`, in the user's home, with
//! sshd's environment. Standard library only: vibebox-image builds this file
//! with plain rustc as a static executable.

#[allow(dead_code)]
mod proto;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

extern "C" {
    fn setgroups(size: usize, list: *const u32) -> i32;
    fn setgid(gid: u32) -> i32;
    fn setuid(uid: u32) -> i32;
    fn setsid() -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
    fn dup2(old: i32, new: i32) -> i32;
    fn waitid(idtype: u32, id: u32, info: *mut u8, options: i32) -> i32;
}

/// `waitid`'s arguments: one process, ended, left unreaped.
const P_PID: u32 = 1;
const WEXITED: i32 = 4;
const WNOWAIT: i32 = 0x0100_0000;

const SIGHUP: i32 = 1;
const SIGCONT: i32 = 18;

/// Where vibebox-init keeps the session's token.
const TOKEN_FILE: &str = "/run/vibebox/agent-token";
/// Whom commands run as.
const USER: &str = "vibecoder";
/// The most connections served at once (a box that opens more only slows
/// itself).
const MAX_CONNECTIONS: usize = 256;
/// How long a new connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

static OPEN: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let listener = match TcpListener::bind(("0.0.0.0", proto::PORT)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vibebox-agent: cannot listen on port {}: {e}", proto::PORT);
            std::process::exit(1);
        }
    };
    // vibebox-init starts us with a pipe as standard output and reads this
    // line before it tells the host the box is ready: the first command
    // finds the port open. What we print later goes where errors go.
    if std::env::args().nth(1).as_deref() == Some("--tell-listening") {
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"listening\n").and_then(|()| out.flush());
        // SAFETY: plain system call on the standard streams.
        unsafe { dup2(2, 1) };
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            // Out of descriptors or memory for a moment: do not spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if OPEN.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            OPEN.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let spawned = std::thread::Builder::new().spawn(move || {
            serve(conn);
            OPEN.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            OPEN.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Tells the client why, and closes.
fn refuse(conn: &mut TcpStream, why: &str) {
    let why = &why.as_bytes()[..why.len().min(proto::MAX_REFUSAL)];
    let _ = proto::write_frame(conn, proto::REFUSED, why);
    let _ = conn.shutdown(Shutdown::Both);
}

/// The session's token, as vibebox-init wrote it.
fn session_token() -> Option<Vec<u8>> {
    let mut t = std::fs::read(TOKEN_FILE).ok()?;
    while t.last().is_some_and(u8::is_ascii_whitespace) {
        t.pop();
    }
    proto::valid_token(&t).then_some(t)
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let payload = match proto::read_frame(&mut conn) {
        Ok(Some((proto::REQUEST, p))) => p,
        _ => return,
    };
    let Some((token, line)) = proto::parse_request(&payload) else {
        return refuse(&mut conn, "a malformed request");
    };
    match session_token() {
        Some(ours) if proto::same_token(token, &ours) => {}
        Some(_) => return refuse(&mut conn, "a wrong token"),
        None => return refuse(&mut conn, "the box has no token yet"),
    }
    let _ = conn.set_read_timeout(None);
    let user = match User::find(USER) {
        Ok(u) => u,
        Err(e) => return refuse(&mut conn, &e),
    };
    let mut child = match user.command(line).spawn() {
        Ok(c) => c,
        Err(e) => return refuse(&mut conn, &format!("cannot start {}: {e}", user.shell)),
    };
    run(conn, &mut child);
}

/// Relays `child`'s standard streams over `conn` and reports how it ended.
fn run(conn: TcpStream, child: &mut Child) {
    let Ok(reader) = conn.try_clone() else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let writer = Arc::new(Mutex::new(conn));
    let mut outputs = Vec::new();
    if let Some(out) = child.stdout.take() {
        outputs.push(relay_output(out, proto::STDOUT, writer.clone()));
    }
    if let Some(err) = child.stderr.take() {
        outputs.push(relay_output(err, proto::STDERR, writer.clone()));
    }
    // Set (under the lock) once the child is reaped: its process group is
    // hung up on only before, never after its number may be reused.
    let ended = Arc::new(Mutex::new(false));
    let stdin = child.stdin.take();
    let pid = child.id() as i32;
    let ended_for_input = ended.clone();
    let _ = std::thread::Builder::new()
        .spawn(move || relay_input(reader, stdin, pid, &ended_for_input));
    let status = wait(child, &ended);
    for o in outputs.into_iter().flatten() {
        let _ = o.join();
    }
    let code = match status {
        Some(s) => exit_code(s),
        None => 255,
    };
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    let _ = proto::write_frame(&mut *w, proto::EXIT, &code.to_be_bytes());
    let _ = w.shutdown(Shutdown::Write);
}

/// Waits for `child` to end; sets `ended` in the same lock as the reaping.
fn wait(child: &mut Child, ended: &Mutex<bool>) -> Option<ExitStatus> {
    // Block until it ends, without reaping it (that happens under the lock).
    let mut info = [0u8; 128];
    // SAFETY: `info` is a siginfo_t's size (128 bytes) and outlives the call.
    while unsafe { waitid(P_PID, child.id(), info.as_mut_ptr(), WEXITED | WNOWAIT) } != 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
    let mut pause = Duration::from_millis(1);
    loop {
        {
            let mut done = ended.lock().unwrap_or_else(|e| e.into_inner());
            match child.try_wait() {
                Ok(Some(status)) => {
                    *done = true;
                    return Some(status);
                }
                Ok(None) => {}
                Err(_) => {
                    *done = true;
                    return None;
                }
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

/// Sends what `from` gives as frames of `kind` until it ends or the client
/// is gone.
fn relay_output(
    mut from: impl Read + Send + 'static,
    kind: u8,
    to: Arc<Mutex<TcpStream>>,
) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .spawn(move || {
            let mut buf = vec![0u8; proto::MAX_DATA];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let mut w = to.lock().unwrap_or_else(|e| e.into_inner());
                if proto::write_frame(&mut *w, kind, &buf[..n]).is_err() {
                    // The client is gone: the command's next write fails.
                    return;
                }
            }
        })
        .ok()
}

/// Feeds the client's input to the command; when the client goes away before
/// the command ended, hangs up on the command's process group.
fn relay_input(mut from: TcpStream, mut stdin: Option<ChildStdin>, pid: i32, ended: &Mutex<bool>) {
    loop {
        match proto::read_frame(&mut from) {
            Ok(Some((proto::STDIN, data))) => {
                if let Some(s) = &mut stdin {
                    if s.write_all(&data).is_err() {
                        // The command closed its input: the rest is dropped.
                        stdin = None;
                    }
                }
            }
            Ok(Some((proto::STDIN_END, _))) => stdin = None,
            Ok(Some(_)) | Ok(None) | Err(_) => break,
        }
    }
    drop(stdin);
    let done = ended.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        // SAFETY: plain system calls; the group is the child's (setsid), and
        // the child is not reaped yet (the lock), so the number is its.
        unsafe {
            kill(-pid, SIGHUP);
            kill(-pid, SIGCONT);
        }
    }
}

/// The account commands run as, from the box's /etc/passwd and /etc/group.
struct User {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    home: String,
    shell: String,
    name: String,
}

impl User {
    fn find(name: &str) -> Result<User, String> {
        let passwd = std::fs::read_to_string("/etc/passwd")
            .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
        let fields: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() == 7 && f[0] == name)
            .ok_or_else(|| format!("no user {name} in the box"))?;
        let uid = fields[2]
            .parse()
            .map_err(|_| format!("a bad uid for {name}"))?;
        let gid = fields[3]
            .parse()
            .map_err(|_| format!("a bad gid for {name}"))?;
        let mut groups = vec![gid];
        if let Ok(group) = std::fs::read_to_string("/etc/group") {
            for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
                if f.len() == 4 && f[3].split(',').any(|m| m == name) {
                    if let Ok(g) = f[2].parse::<u32>() {
                        if !groups.contains(&g) {
                            groups.push(g);
                        }
                    }
                }
            }
        }
        let shell = if fields[6].is_empty() {
            "/bin/sh"
        } else {
            fields[6]
        };
        Ok(User {
            uid,
            gid,
            groups,
            home: fields[5].to_string(),
            shell: shell.to_string(),
            name: name.to_string(),
        })
    }

    /// `line` as sshd runs a command: the shell with `-c`, in the home, with
    /// sshd's environment, in a session of its own, no terminal.
    fn command(&self, line: &str) -> Command {
        let mut cmd = Command::new(&self.shell);
        cmd.arg("-c")
            .arg(line)
            .env_clear()
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("HOME", &self.home)
            .env("SHELL", &self.shell)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/games")
            .env("MAIL", format!("/var/mail/{}", self.name))
            .current_dir(if std::path::Path::new(&self.home).is_dir() {
                &self.home
            } else {
                "/"
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if setsid() < 0
                    || setgroups(groups.len(), groups.as_ptr()) != 0
                    || setgid(gid) != 0
                    || setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}
