//! The supervisor's control socket, `.vibebox/supervisor.sock`.
//!
//! One JSON object a line in each direction. A client sends one [`Request`];
//! `status` gets one [`Status`], `attach` gets the status now and at every
//! change for as long as the connection stays open (the connection is the
//! client's reference), `stop` gets nothing. A client that cannot connect
//! treats the session as stopped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The status, once.
    Status,
    /// Hold a reference and follow the status; `answers`: a person at this
    /// client's terminal answers ask mode's questions.
    Attach {
        /// The client shows questions and sends answers.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        answers: bool,
        /// The client waits for the shared SSH connection (a terminal,
        /// `ssh-config`): where it is not opened at once, it opens now.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ssh: bool,
    },
    /// Stop the session now: suspend it, or power it off with `shutdown`.
    Stop {
        /// Power off instead of suspending (and forget a suspended state).
        #[serde(default)]
        shutdown: bool,
    },
    /// Apply the `[network]` of this config text (checked, and its grants
    /// accepted, by the client) to the running box; gets one [`Reloaded`].
    Reload {
        /// The text of vibebox.toml.
        config: String,
    },
    /// Copy the running machine's disk to `dest` (a new file), whole: the
    /// guest syncs and pauses for the copy (`vibebox fork`); gets one
    /// [`Answered`].
    CopyDisk {
        /// Where the copy goes (absolute; must not exist).
        dest: std::path::PathBuf,
        /// Where the running memory and devices go too (absolute; a new
        /// directory the supervisor makes, private), for a fork that resumes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memory: Option<std::path::PathBuf>,
    },
    /// The person's answer to an ask-mode question; gets one [`Answered`].
    Answer {
        /// The question ([`Status::questions`]).
        id: u64,
        /// The answer.
        answer: Answer,
    },
}

pub use vibebox_net::ask::{Answer, Question};

/// The answer to [`Request::Answer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    /// Whether the answer was taken.
    pub ok: bool,
    /// What it did, or why not.
    pub message: String,
}

/// The answer to [`Request::Reload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// Whether the new policy is in force.
    pub ok: bool,
    /// What changed, what waits for the next start, or why it failed.
    pub message: String,
}

/// A running supervisor's session state (a session without one is stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// The machine is being started.
    Starting,
    /// The machine runs: clients may enter it.
    Running,
    /// The machine is going down; a new one can start after.
    Stopping,
    /// The start failed; `detail` says why.
    Failed,
}

impl SessionState {
    /// The word `vibebox list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Starting => "starting",
            SessionState::Running => "running",
            SessionState::Stopping => "stopping",
            SessionState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's status, as its supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Where the session is.
    pub state: SessionState,
    /// Attached clients.
    pub clients: u32,
    /// Host loopback port of the guest's sshd, once the session's shared SSH
    /// connection is open (it opens while the session already runs).
    #[serde(default)]
    pub ssh_port: Option<u16>,
    /// Why the shared SSH connection did not open (the box runs on: its
    /// commands do not need it, terminals do).
    #[serde(default)]
    pub ssh_error: Option<String>,
    /// Host loopback port of the guest's exec agent, once running (the
    /// client's token is in `.vibebox/ssh/agent-token`).
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// The supervisor's process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// What the supervisor is doing or why it failed.
    #[serde(default)]
    pub detail: Option<String>,
    /// The box's ports reachable from the host: `[network] expose` and the
    /// ones forwarded automatically, and those it cannot forward.
    #[serde(default)]
    pub ports: Vec<Forward>,
    /// Where the project is in the box (fixed at the start: it stays when
    /// the project's directory moves on the host).
    #[serde(default)]
    pub guest_dir: Option<String>,
    /// Whether the box's network is in ask mode (interactive clients then
    /// attach as ones that answer).
    #[serde(default)]
    pub ask: bool,
    /// Ask mode's questions waiting for a person (names the box looked up:
    /// checked, but chosen by the box).
    #[serde(default)]
    pub questions: Vec<Question>,
}

/// A guest port and how the host reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The port in the box.
    pub guest: u16,
    /// The port on the host's 127.0.0.1; `None` when it is not forwarded.
    pub host: Option<u16>,
    /// `config` (`[network] expose`) or `auto`.
    pub source: String,
    /// The process listening in the box (escaped), when known.
    #[serde(default)]
    pub process: Option<String>,
    /// Why it is not forwarded.
    #[serde(default)]
    pub note: Option<String>,
}

/// The longest line either side reads: a status is a few hundred bytes.
pub const MAX_LINE: u64 = 64 * 1024;

/// Reads one line of at most [`MAX_LINE`] bytes.
pub fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    let n = std::io::Read::take(reader, MAX_LINE).read_line(&mut line)?;
    Ok((n > 0).then_some(line))
}

fn request(socket: &Path, req: Request) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = serde_json::to_string(&req).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    Ok(stream)
}

/// Asks the supervisor at `socket` for its status; `None` when none answers.
pub fn status(socket: &Path) -> Option<Status> {
    let stream = request(socket, Request::Status).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let line = read_line(&mut BufReader::new(stream)).ok()??;
    serde_json::from_str(&line).ok()
}

/// An attached client: holds one reference while it lives.
pub struct Attachment {
    reader: BufReader<UnixStream>,
}

/// An attachment whose statuses a thread reads: the reference is held until
/// this is dropped (which also ends the thread).
pub struct Following {
    stream: UnixStream,
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl Attachment {
    /// Attaches to the supervisor at `socket`.
    pub fn connect(socket: &Path) -> std::io::Result<Attachment> {
        Attachment::connect_as(socket, false)
    }

    /// Attaches to the supervisor at `socket`; with `answers`, as a client
    /// whose person answers ask mode's questions.
    pub fn connect_as(socket: &Path, answers: bool) -> std::io::Result<Attachment> {
        Attachment::connect_with(socket, answers, false)
    }

    /// Attaches to the supervisor at `socket`; with `answers`, as a client
    /// whose person answers ask mode's questions; with `ssh`, as one that
    /// waits for the shared SSH connection.
    pub fn connect_with(socket: &Path, answers: bool, ssh: bool) -> std::io::Result<Attachment> {
        let stream = request(socket, Request::Attach { answers, ssh })?;
        Ok(Attachment {
            reader: BufReader::new(stream),
        })
    }

    /// Hands every later status to `f`, on a thread of its own, until the
    /// supervisor hangs up or the returned [`Following`] is dropped.
    pub fn follow(
        mut self,
        mut f: impl FnMut(Status) + Send + 'static,
    ) -> std::io::Result<Following> {
        let stream = self.reader.get_ref().try_clone()?;
        std::thread::spawn(move || {
            while let Some(status) = self.next_status() {
                f(status);
            }
        });
        Ok(Following { stream })
    }

    /// The next status the supervisor sends (blocks); `None` when it hung up.
    pub fn next_status(&mut self) -> Option<Status> {
        let line = read_line(&mut self.reader).ok()??;
        serde_json::from_str(&line).ok()
    }
}

/// Asks the supervisor at `socket` to apply `config`'s `[network]`; `None`
/// when no supervisor answers.
pub fn reload(socket: &Path, config: &str) -> std::io::Result<Option<Reloaded>> {
    let Ok(stream) = request(
        socket,
        Request::Reload {
            config: config.to_string(),
        },
    ) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let line = read_line(&mut BufReader::new(stream))?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the supervisor hung up without an answer",
        )
    })?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// Sends the person's `answer` to question `id`.
pub fn answer(socket: &Path, id: u64, answer: Answer) -> std::io::Result<Answered> {
    one_answer(
        socket,
        Request::Answer { id, answer },
        Duration::from_secs(30),
    )
}

/// Asks the supervisor to copy the running machine's disk to `dest` (and
/// its memory into the new directory `memory`).
pub fn copy_disk(socket: &Path, dest: &Path, memory: Option<&Path>) -> std::io::Result<Answered> {
    let req = Request::CopyDisk {
        dest: dest.to_path_buf(),
        memory: memory.map(Path::to_path_buf),
    };
    one_answer(socket, req, Duration::from_secs(1800))
}

fn one_answer(socket: &Path, req: Request, wait: Duration) -> std::io::Result<Answered> {
    let stream = request(socket, req)?;
    stream.set_read_timeout(Some(wait))?;
    let line = read_line(&mut BufReader::new(stream))?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the supervisor hung up without an answer",
        )
    })?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// Asks the supervisor at `socket` to stop the session (suspend it, or power
/// it off with `shutdown`), and waits until it no longer answers (at most a
/// minute).
pub fn stop(socket: &Path, shutdown: bool) -> std::io::Result<()> {
    drop(request(socket, Request::Stop { shutdown })?);
    let start = std::time::Instant::now();
    while status(socket).is_some() {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the supervisor did not stop within 60 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_one_json_object_a_line() {
        assert_eq!(
            serde_json::to_string(&Request::Attach {
                answers: false,
                ssh: false
            })
            .unwrap(),
            r#"{"op":"attach"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"attach"}"#).unwrap(),
            Request::Attach {
                answers: false,
                ssh: false
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"attach","ssh":true}"#).unwrap(),
            Request::Attach {
                answers: false,
                ssh: true
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"answer","id":3,"answer":"once"}"#).unwrap(),
            Request::Answer {
                id: 3,
                answer: Answer::Once
            }
        );
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"answer","id":3,"answer":"maybe"}"#).is_err()
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"stop"}"#).unwrap(),
            Request::Stop { shutdown: false }
        );
        assert_eq!(
            serde_json::to_string(&Request::Stop { shutdown: true }).unwrap(),
            r#"{"op":"stop","shutdown":true}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"rm -rf"}"#).is_err());
        let s = Status {
            state: SessionState::Running,
            clients: 2,
            ssh_port: Some(2222),
            ssh_error: None,
            agent_port: Some(2223),
            pid: None,
            detail: None,
            ports: vec![Forward {
                guest: 8000,
                host: Some(8000),
                source: "auto".into(),
                process: Some("python3".into()),
                note: None,
            }],
            guest_dir: Some("/home/vibecoder/app".into()),
            ask: true,
            questions: vec![Question {
                id: 1,
                name: "example.com".into(),
            }],
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""state":"running""#), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    }

    #[test]
    fn lines_are_bounded() {
        let long = vec![b'a'; MAX_LINE as usize * 2];
        let mut r = BufReader::new(&long[..]);
        let line = read_line(&mut r).unwrap().unwrap();
        assert_eq!(line.len() as u64, MAX_LINE);
    }
}
