//! A minimal QMP client: QEMU's JSON control protocol on the machine's
//! private unix socket (`-qmp unix:…,server=on`). One command at a time;
//! asynchronous events are skipped. Lines are bounded.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::VmError;

/// The longest line read from QMP.
const MAX_LINE: u64 = 1 << 20;

/// A QMP session.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

fn err(msg: impl Into<String>) -> VmError {
    VmError::Setup(msg.into())
}

impl Qmp {
    /// Connects to `socket` (retrying while QEMU starts, up to `timeout`)
    /// and enters command mode.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, VmError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => {
                    return Err(err(format!("cannot reach QEMU's control socket: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| err(e.to_string()))?;
        let mut qmp = Qmp {
            writer: stream.try_clone().map_err(|e| err(e.to_string()))?,
            reader: BufReader::new(stream),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(err("QEMU's control socket did not greet with QMP"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, VmError> {
        let mut line = String::new();
        let n = std::io::Read::take(&mut self.reader, MAX_LINE)
            .read_line(&mut line)
            .map_err(|e| err(format!("QMP: {e}")))?;
        if n == 0 {
            return Err(err("QEMU closed its control socket"));
        }
        serde_json::from_str(&line)
            .map_err(|e| err(format!("QMP sent something else than JSON: {e}")))
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, VmError> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| err(format!("QMP: {e}")))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!(
                    "QEMU refused {command}: {}",
                    e.get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given")
                )));
            }
            // An event: not the answer.
        }
    }

    /// Polls `query-migrate` until the migration ends; `Ok` when completed.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(err(format!(
                        "QEMU could not save the machine: {}",
                        r.get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given")
                    )))
                }
                _ if start.elapsed() > timeout => {
                    return Err(err("saving the machine took too long"));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Polls `query-status` until the machine is in `state` (e.g. `paused`).
    pub fn wait_status(&mut self, state: &str, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        loop {
            let r = self.execute("query-status", json!({}))?;
            let now = r.get("status").and_then(Value::as_str).unwrap_or("");
            if now == state {
                return Ok(());
            }
            if now == "internal-error" || now == "shutdown" || start.elapsed() > timeout {
                return Err(err(format!("the machine is {now:?}, not {state}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
