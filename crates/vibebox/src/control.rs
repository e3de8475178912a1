//! The supervisor's control socket, `.vibebox/supervisor.sock`.
//!
//! One JSON object a line in each direction. Requests: `{"op":"status"}`,
//! `{"op":"attach"}` (a reference held while the connection stays open; the
//! supervisor answers with its status now and at every change), `{"op":"stop"}`.
//! A client that cannot connect treats the session as stopped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A session's state, as its supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `starting`, `running`, `stopping` or `failed`.
    pub state: String,
    /// Attached clients.
    pub clients: u32,
    /// Host loopback port of the guest's sshd, once running.
    #[serde(default)]
    pub ssh_port: Option<u16>,
    /// The supervisor's process id.
    #[serde(default)]
    pub pid: Option<u32>,
    /// What the supervisor is doing or why it failed.
    #[serde(default)]
    pub detail: Option<String>,
}

fn request(socket: &Path, op: &str) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{{\"op\":\"{op}\"}}\n").as_bytes())?;
    Ok(stream)
}

/// Asks the supervisor at `socket` for its status; `None` when none answers.
pub fn status(socket: &Path) -> Option<Status> {
    let stream = request(socket, "status").ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// An attached client: holds one reference while it lives.
pub struct Attachment {
    reader: BufReader<UnixStream>,
}

impl Attachment {
    /// Attaches to the supervisor at `socket`.
    pub fn connect(socket: &Path) -> std::io::Result<Attachment> {
        let stream = request(socket, "attach")?;
        Ok(Attachment {
            reader: BufReader::new(stream),
        })
    }

    /// The next status the supervisor sends (blocks); `None` when it hung up.
    pub fn next_status(&mut self) -> Option<Status> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => serde_json::from_str(&line).ok(),
        }
    }
}

/// Asks the supervisor at `socket` to stop the session, and waits until it no
/// longer answers (at most a minute).
pub fn stop(socket: &Path) -> std::io::Result<()> {
    drop(request(socket, "stop")?);
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
