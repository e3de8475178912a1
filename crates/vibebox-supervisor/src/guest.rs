//! What the supervisor asks the box over the shared SSH connection (as
//! `vibecoder`): whether a detached terminal runs. Whatever the box answers is
//! attacker input: bounded, parsed strictly, never printed raw.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vibebox_vm::ssh;

/// How to reach the guest's sshd through the shared connection.
#[derive(Debug, Clone)]
pub struct GuestShell {
    /// `.vibebox/ssh`.
    pub ssh_dir: PathBuf,
    /// The host port forwarded to the guest's sshd.
    pub port: u16,
    /// The shared connection's control socket.
    pub control: PathBuf,
}

/// The most bytes read of one answer.
const ANSWER_LIMIT: u64 = 1 << 20;

impl GuestShell {
    /// The session's shell, with the master's socket in `run_dir`.
    pub fn new(ssh_dir: &Path, port: u16, run_dir: &Path) -> GuestShell {
        GuestShell {
            ssh_dir: ssh_dir.to_path_buf(),
            port,
            control: run_dir.join("ssh-master"),
        }
    }

    /// An `ssh` that runs `line` in the guest without a terminal.
    pub fn command(&self, line: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(ssh::options(&self.ssh_dir, self.port, &self.control))
            .arg("-T")
            .arg("vibecoder@127.0.0.1")
            .arg(line)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Runs `line` and returns its exit code and output (at most 1 MiB), or
    /// `None` when it could not run or took longer than `timeout` (it is
    /// killed then).
    pub fn run(&self, line: &str, timeout: Duration) -> Option<(i32, String)> {
        let mut child = self.command(line).stdout(Stdio::piped()).spawn().ok()?;
        let stdout = child.stdout.take()?;
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.take(ANSWER_LIMIT).read_to_end(&mut out);
            out
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let out = reader.join().ok()?;
        Some((status?.code()?, String::from_utf8_lossy(&out).into_owned()))
    }

    /// Whether a terminal of `vibebox run` still runs its command; `false`
    /// when the box does not answer.
    pub fn terminals_running(&self) -> bool {
        self.run(&vibebox_core::boxterm::list_line(), Duration::from_secs(30))
            .is_some_and(|(code, out)| {
                code == 0
                    && vibebox_core::boxterm::parse_list(&out)
                        .iter()
                        .any(|t| t.running)
            })
    }
}
