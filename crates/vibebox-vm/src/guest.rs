//! The guest init's control channel, the same for every runtime: the host
//! sends the guest its configuration (key, network, mounts, explain text) as
//! lines, then waits for `ready <host key>`, which it pins. Lines from the
//! guest are bounded: the init lives on a disk the box's root can rewrite.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vibebox_core::mounts::MountMode;
use vibebox_core::runtime::NetworkEndpoint;

use crate::ssh;

/// The longest line read from the guest's control channel.
pub const CONTROL_LINE_MAX: usize = 4096;

/// A value handed to the guest's init as one word of a control line: bytes
/// outside `[A-Za-z0-9/._,:+=@-]` become `\xHH`, which the init decodes with
/// bash's builtin `printf %b` (no program to start: under TCG each costs tens
/// of milliseconds). An empty value is an empty word, which a line of
/// several words cannot tell from a missing one: such values are never empty.
pub fn escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/._,:+=@-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The configuration the host sends the guest's init: its authorized key
/// and exec agent token,
/// its network, the mounts it makes itself (`(tag, mode, guest path)`; none
/// in a container, where the engine mounts them), the explain text.
pub fn config_message(
    keys: &crate::ssh::ClientKeys,
    net: &NetworkEndpoint,
    mounts: &[(String, MountMode, String)],
    explain: &str,
) -> String {
    let mut msg = String::new();
    msg.push_str(&keys.key_line());
    msg.push_str(&format!(
        "net {} {}/{} {gw} {gw}\n",
        net.guest_mac,
        net.guest_address,
        net.prefix,
        gw = net.gateway
    ));
    for (tag, mode, guest) in mounts {
        let mode = if *mode == MountMode::ReadOnly {
            "ro"
        } else {
            "rw"
        };
        msg.push_str(&format!(
            "mount {tag} {mode} {}\n",
            escaped(guest.as_bytes())
        ));
    }
    msg.push_str("end\n");
    // After "end": the init reads it once it has settled (a long line costs
    // tens of milliseconds under TCG, which the first command need not wait).
    msg.push_str(&explain_line(explain));
    msg
}

/// The explain text for `:explain` in the box, as a control line. Never
/// empty: `:explain` waits while the box's copy is empty (a resume empties
/// it until this line comes).
pub fn explain_line(explain: &str) -> String {
    let text = if explain.trim().is_empty() {
        "vibebox could not describe this box; run `vibebox explain` on the host\n"
    } else {
        explain
    };
    format!("explain {}\n", escaped(text.as_bytes()))
}

/// Why the guest did not report ready.
#[derive(Debug)]
pub enum NotReady<T> {
    /// The machine ended (what `ended` said).
    Ended(T),
    /// Not within the time allowed.
    Timeout,
    /// The guest sent a line longer than [`CONTROL_LINE_MAX`].
    TooLong,
    /// The guest sent an invalid host key.
    BadKey,
    /// The host key could not be pinned, or the channel failed.
    Failed(String),
}

impl<T> NotReady<T> {
    /// What went wrong, for a person (`None` for [`NotReady::Ended`], which
    /// each runtime tells in its own words); `who` is "the guest" or "the
    /// box", `log` the log that says more.
    pub fn message(&self, who: &str, timeout: Duration, log: &str) -> Option<String> {
        Some(match self {
            NotReady::Ended(_) => return None,
            NotReady::Timeout => format!(
                "{who} did not become ready within {} s; see {log}",
                timeout.as_secs()
            ),
            NotReady::TooLong => {
                format!("{who} sent a control line longer than {CONTROL_LINE_MAX} bytes; see {log}")
            }
            NotReady::BadKey => format!("{who} sent an invalid host key"),
            NotReady::Failed(e) => e.clone(),
        })
    }
}

/// Complete control lines from the guest, each bounded by
/// [`CONTROL_LINE_MAX`]. One per machine, kept for its life: the guest may
/// send several lines at once, and a reader dropped after the first would
/// lose the others with its buffer.
pub struct ControlLines {
    reader: BufReader<UnixStream>,
    line: String,
}

/// What one read of [`ControlLines`] gave.
enum Got {
    /// A whole line (without its newline).
    Line(String),
    /// Nothing whole yet (a timeout or part of a line).
    Nothing,
    /// The channel's end.
    Closed,
    /// A line longer than the bound (dropped).
    TooLong,
}

impl ControlLines {
    /// Reads `control` (through a clone of it).
    pub fn new(control: &UnixStream) -> std::io::Result<ControlLines> {
        Ok(ControlLines {
            reader: BufReader::new(control.try_clone()?),
            line: String::new(),
        })
    }

    /// Reads from now on time out after `poll` (`None`: never).
    fn poll_every(&self, poll: Option<Duration>) -> std::io::Result<()> {
        self.reader.get_ref().set_read_timeout(poll)
    }

    fn next(&mut self) -> Got {
        let room = (CONTROL_LINE_MAX + 1).saturating_sub(self.line.len()) as u64;
        let read = std::io::Read::take(&mut self.reader, room).read_line(&mut self.line);
        if self.line.len() > CONTROL_LINE_MAX {
            self.line.clear();
            return Got::TooLong;
        }
        match read {
            Ok(0) => Got::Closed,
            Ok(_) if self.line.ends_with('\n') => {
                let line = self.line.trim().to_string();
                self.line.clear();
                Got::Line(line)
            }
            _ => Got::Nothing,
        }
    }
}

/// Waits for `ready <host key>` on `control` and pins the key in `ssh_dir`.
/// `ended` is asked between reads whether the machine has ended.
pub fn await_ready<T>(
    lines: &mut ControlLines,
    ssh_dir: &Path,
    timeout: Duration,
    mut ended: impl FnMut() -> Option<T>,
) -> Result<(), NotReady<T>> {
    let io =
        |e: std::io::Error| NotReady::Failed(format!("the guest's control channel failed: {e}"));
    lines
        .poll_every(Some(Duration::from_millis(500)))
        .map_err(io)?;
    let start = Instant::now();
    loop {
        if let Some(how) = ended() {
            return Err(NotReady::Ended(how));
        }
        if start.elapsed() > timeout {
            return Err(NotReady::Timeout);
        }
        match lines.next() {
            Got::TooLong => return Err(NotReady::TooLong),
            Got::Closed => std::thread::sleep(Duration::from_millis(50)),
            Got::Nothing => {}
            Got::Line(line) => {
                // A bare "ready" (its key file was empty) is a bad key too,
                // said at once rather than after the whole timeout.
                let rest = if line == "ready" {
                    Some("")
                } else {
                    line.strip_prefix("ready ")
                };
                if let Some(rest) = rest {
                    let (kind, blob) = ssh::parse_host_key(rest).ok_or(NotReady::BadKey)?;
                    ssh::pin_host_key(ssh_dir, &kind, &blob)
                        .map_err(|e| NotReady::Failed(e.to_string()))?;
                    break;
                }
            }
        }
    }
    lines.poll_every(None).map_err(io)?;
    Ok(())
}

/// Waits (at most `timeout`) for the line `word` on `control`; other lines
/// are skipped, each bounded like every control line.
pub fn await_word(lines: &mut ControlLines, word: &str, timeout: Duration) -> Result<(), String> {
    let io = |e: std::io::Error| format!("the guest's control channel failed: {e}");
    lines
        .poll_every(Some(Duration::from_millis(200)))
        .map_err(io)?;
    let start = Instant::now();
    let found = loop {
        if start.elapsed() > timeout {
            break Err(format!(
                "the guest did not answer `{word}` within {} s",
                timeout.as_secs()
            ));
        }
        match lines.next() {
            Got::Closed => break Err("the guest's control channel closed".into()),
            Got::Line(line) if line == word => break Ok(()),
            Got::Line(_) | Got::Nothing | Got::TooLong => {}
        }
    };
    lines.poll_every(None).map_err(io)?;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_explain_line_is_never_empty() {
        assert!(explain_line("").len() > "explain x\n".len());
        assert!(explain_line(" \n").starts_with("explain vibebox\\x20could"));
        assert_eq!(explain_line("a b\n"), "explain a\\x20b\\x0a\n");
    }

    #[test]
    fn escaped_values_are_one_word_of_plain_bytes() {
        assert_eq!(escaped(b"/home/vibecoder/my-app"), "/home/vibecoder/my-app");
        assert_eq!(
            escaped("/home/a b\\c\n$(x)`y`;ü".as_bytes()),
            "/home/a\\x20b\\x5cc\\x0a\\x24\\x28x\\x29\\x60y\\x60\\x3b\\xc3\\xbc"
        );
        // Whatever the bytes, the result has no whitespace, quote or
        // backslash other than those of its escapes.
        let all: Vec<u8> = (0..=255).collect();
        let e = escaped(&all);
        assert!(e.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(e.matches('\\').count(), e.matches("\\x").count());
    }

    #[test]
    fn a_word_is_found_among_other_lines_and_a_silent_guest_times_out() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        // The guest floods an over-long line and other words first.
        b.write_all(&vec![b'x'; CONTROL_LINE_MAX * 3]).unwrap();
        b.write_all(b"\nkeyed-not\nready x\nkeyed\nidentified\nsettled\n")
            .unwrap();
        let mut lines = ControlLines::new(&a).unwrap();
        assert_eq!(
            await_word(&mut lines, "keyed", Duration::from_secs(10)),
            Ok(())
        );
        // Words sent together are each found in turn (none lost with a buffer).
        assert_eq!(
            await_word(&mut lines, "identified", Duration::from_secs(10)),
            Ok(())
        );
        assert_eq!(
            await_word(&mut lines, "settled", Duration::from_secs(10)),
            Ok(())
        );
        // Silent: a timeout, not a hang.
        let r = await_word(&mut lines, "keyed", Duration::from_millis(300));
        assert!(r.unwrap_err().contains("did not answer"));
        // Gone: said at once.
        drop(b);
        let r = await_word(&mut lines, "keyed", Duration::from_secs(10));
        assert!(r.unwrap_err().contains("closed"));
    }

    /// Waits for `ready` from a machine that never ends.
    fn ready_on(lines: &mut ControlLines, ssh_dir: &Path) -> Result<(), NotReady<()>> {
        await_ready(lines, ssh_dir, Duration::from_secs(10), || None)
    }

    #[test]
    fn settled_sent_with_ready_is_not_lost() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let (_, blob) = crate::ssh::parse_host_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMcR0mY7tC1qfQmRrXkMxyuSUzZR4RW2ZIa8r0h5xS2b",
        )
        .unwrap();
        // One write: a reader that buffered past "ready" and was dropped
        // would lose "settled", and the start would wait for it in vain.
        b.write_all(format!("ready ssh-ed25519 {blob}\nsettled\n").as_bytes())
            .unwrap();
        let mut lines = ControlLines::new(&a).unwrap();
        let r = ready_on(&mut lines, dir.path());
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            await_word(&mut lines, "settled", Duration::from_secs(10)),
            Ok(())
        );
    }

    #[test]
    fn ready_without_a_key_is_refused_at_once() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"ready  \n").unwrap();
        let mut lines = ControlLines::new(&a).unwrap();
        let r = ready_on(&mut lines, dir.path());
        assert!(matches!(r, Err(NotReady::BadKey)), "{r:?}");
    }

    #[test]
    fn a_flood_without_newline_is_refused_and_a_dead_machine_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = b.write_all(&vec![b'x'; CONTROL_LINE_MAX * 4]);
            b
        });
        let mut lines = ControlLines::new(&a).unwrap();
        let r = ready_on(&mut lines, dir.path());
        assert!(matches!(r, Err(NotReady::TooLong)), "{r:?}");
        drop(writer.join());
        let (a, _b) = UnixStream::pair().unwrap();
        let mut lines = ControlLines::new(&a).unwrap();
        let r = await_ready(&mut lines, dir.path(), Duration::from_secs(10), || {
            Some("gone")
        });
        assert!(matches!(r, Err(NotReady::Ended("gone"))), "{r:?}");
    }
}
