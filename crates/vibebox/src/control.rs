//! The supervisor's control socket, `.vibebox/supervisor.sock`, seen from a client.
//!
//! One JSON object a line in each direction. A client that cannot connect
//! treats the session as stopped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A running session's state, as its supervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `starting`, `running` or `stopping`.
    pub state: String,
    /// Attached clients.
    pub clients: u32,
}

/// Asks the supervisor at `socket` for its status; `None` when none answers.
pub fn status(socket: &Path) -> Option<Status> {
    let stream = UnixStream::connect(socket).ok()?;
    let timeout = Some(Duration::from_secs(2));
    stream.set_read_timeout(timeout).ok()?;
    stream.set_write_timeout(timeout).ok()?;
    let mut writer = stream.try_clone().ok()?;
    writer.write_all(b"{\"op\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// Asks the supervisor at `socket` to stop the session, and waits until it no
/// longer answers (at most a minute).
pub fn stop(socket: &Path) -> std::io::Result<()> {
    let wait = Duration::from_secs(60);
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"{\"op\":\"stop\"}\n")?;
    let start = std::time::Instant::now();
    while status(socket).is_some() {
        if start.elapsed() > wait {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the supervisor did not stop within 60 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
