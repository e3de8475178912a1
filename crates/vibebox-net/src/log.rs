//! The network log: one JSON object a line, one line per decision.

use serde::Serialize;
use vibebox_core::policy::Verdict;

/// What a decision was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A DNS query from the guest.
    Dns,
    /// A TCP connection from the guest.
    Tcp,
    /// A UDP datagram that is not DNS.
    Udp,
}

/// One decision of the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkEvent {
    /// When (RFC 3339).
    pub time: String,
    /// DNS, TCP or UDP.
    pub kind: EventKind,
    /// The name involved, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The destination (address:port, or the query type for DNS).
    pub destination: String,
    /// Allowed or denied.
    pub verdict: Verdict,
    /// Why, in a few words.
    pub reason: String,
    /// Bytes sent by the guest (connections).
    pub bytes_up: u64,
    /// Bytes received by the guest (connections).
    pub bytes_down: u64,
}

impl NetworkEvent {
    /// The event as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// At most this many decisions a second are written; the rest are counted
/// and summarised in one line when the second ends (a flood of refused
/// packets costs one line a second, not one line a packet).
pub const LOG_LINES_PER_SECOND: u32 = 50;

/// A log sink that keeps at most [`LOG_LINES_PER_SECOND`] lines a second.
pub struct RateLimitedLog {
    sink: Box<dyn FnMut(&NetworkEvent) + Send>,
    window: std::time::Instant,
    in_window: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    /// Wraps `sink`.
    pub fn new(sink: Box<dyn FnMut(&NetworkEvent) + Send>) -> RateLimitedLog {
        RateLimitedLog {
            sink,
            window: std::time::Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Logs `e`, unless this second's budget is spent.
    pub fn log(&mut self, e: &NetworkEvent) {
        self.tick();
        if self.in_window < LOG_LINES_PER_SECOND {
            self.in_window += 1;
            (self.sink)(e);
        } else {
            self.suppressed += 1;
        }
    }

    /// Ends the second when it is over: writes the summary of what was
    /// suppressed in it. Call it regularly.
    pub fn tick(&mut self) {
        if self.window.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        if self.suppressed > 0 {
            (self.sink)(&NetworkEvent {
                time: jiff::Timestamp::now().to_string(),
                kind: EventKind::Tcp,
                name: None,
                destination: "*".to_string(),
                verdict: Verdict::Deny,
                reason: format!(
                    "{} more decisions not logged (more than {LOG_LINES_PER_SECOND} a second)",
                    self.suppressed
                ),
                bytes_up: 0,
                bytes_down: 0,
            });
        }
        self.window = std::time::Instant::now();
        self.in_window = 0;
        self.suppressed = 0;
    }
}

/// `network.log` is rotated at this size (one older file is kept as
/// `network.log.1`).
pub const NETWORK_LOG_MAX: u64 = 16 << 20;

/// An append-only log file rotated at a size, opened without following
/// symlinks.
pub struct RotatingLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    size: u64,
    max: u64,
}

impl RotatingLog {
    fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    }

    /// Opens (appends to) `path`, rotating it past `max` bytes.
    pub fn open(path: &std::path::Path, max: u64) -> std::io::Result<RotatingLog> {
        let file = RotatingLog::open_file(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            max,
        })
    }

    /// Appends `line` and a newline.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        if self.size + line.len() as u64 + 1 > self.max {
            let old = self.path.with_extension("log.1");
            std::fs::rename(&self.path, old)?;
            self.file = RotatingLog::open_file(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(format!("{line}\n").as_bytes())?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NetworkEvent {
        NetworkEvent {
            time: "t".into(),
            kind: EventKind::Udp,
            name: None,
            destination: "192.0.2.1".into(),
            verdict: Verdict::Deny,
            reason: "r".into(),
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    #[test]
    fn a_flood_is_summarised() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let mut log =
            RateLimitedLog::new(Box::new(move |e| l2.lock().unwrap().push(e.reason.clone())));
        for _ in 0..10_000 {
            log.log(&event());
        }
        log.window -= std::time::Duration::from_secs(2);
        log.tick();
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), LOG_LINES_PER_SECOND as usize + 1);
        assert!(
            lines.last().unwrap().starts_with("9950 more decisions"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_file_rotates_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network.log");
        let mut log = RotatingLog::open(&p, 100).unwrap();
        for i in 0..30 {
            log.write_line(&format!("line {i:04}")).unwrap();
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 100);
        assert!(
            std::fs::metadata(dir.path().join("network.log.1"))
                .unwrap()
                .len()
                <= 100
        );
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("evil.log")).unwrap();
        assert!(RotatingLog::open(&dir.path().join("evil.log"), 100).is_err());
    }
}
