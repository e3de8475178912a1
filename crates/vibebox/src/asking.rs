//! Ask mode at the person's terminal: an interactive client whose box is in
//! ask mode runs its ssh on a pseudo-terminal of its own and relays the
//! keyboard to it, so that when the box looks up a name the policy does not
//! list, it can show the question and read the answer's one key without ssh
//! (or the box) seeing it.
//!
//! ssh writes the box's output straight to the terminal; only the keyboard
//! and the window size go through here. ssh runs in a session of its own on
//! the pseudo-terminal: when this process dies, the pseudo-terminal hangs up
//! and ssh ends with it.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustix::termios::{self, OptionalActions, Termios, Winsize};
use vibebox_core::text::for_terminal;
use vibebox_supervisor::protocol::{self as control, Answer, Question};

/// The questions waiting, as the last status said (shared with the thread
/// that follows the status).
#[derive(Clone, Default)]
pub struct Questions(Arc<Mutex<Vec<Question>>>);

impl Questions {
    /// Replaces the waiting questions.
    pub fn set(&self, q: Vec<Question>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = q;
    }

    fn get(&self) -> Vec<Question> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a key does while a question is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// An answer.
    Answer(Answer),
    /// Esc: not now (this terminal stops showing the question).
    Later,
    /// Anything else: ignored (the box never sees it).
    Other,
}

/// Reads what the person typed while a question is shown: one read's bytes.
pub fn key(bytes: &[u8]) -> Key {
    match bytes {
        [b'o' | b'O'] => Key::Answer(Answer::Once),
        [b'a' | b'A'] => Key::Answer(Answer::Always),
        [b'd' | b'D'] => Key::Answer(Answer::Deny),
        [b'n' | b'N'] => Key::Answer(Answer::Quiet),
        // A lone Esc; an arrow key (Esc [ A) is not one.
        [0x1b] => Key::Later,
        _ => Key::Other,
    }
}

/// How long the keyboard must rest before a key answers: after the
/// question appears, and after any other key. The box chooses when a
/// question appears; without this, a person typing to an agent could
/// answer one with a letter of the word they were typing.
pub const SETTLE: Duration = Duration::from_millis(700);

/// Whether a key at `now` may answer a question shown at `shown` when the
/// previous key came at `last`.
pub fn settled(now: Instant, shown: Instant, last: Option<Instant>) -> bool {
    now.saturating_duration_since(shown) >= SETTLE
        && last.is_none_or(|l| now.saturating_duration_since(l) >= SETTLE)
}

/// The question as the terminal shows it (`\r\n`: the terminal is raw).
pub fn prompt(q: &Question) -> String {
    format!(
        "\r\n\x1b[1mvibebox:\x1b[0m the box looks up \x1b[1m{}\x1b[0m, which vibebox.toml does not list. Allow it?\r\n  [o] once, until the box stops   [a] always (added to vibebox.toml)   [d] deny   [n] deny and ask nothing more   [Esc] not now\r\n  (keys typed while this shows go nowhere; the answer key counts after a pause)\r\n",
        for_terminal(&q.name)
    )
}

/// The terminal's settings, put back when dropped.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> anyhow::Result<RawTerminal> {
        let stdin = std::io::stdin();
        let saved =
            termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

/// A pseudo-terminal: the side this process keeps, and the side ssh gets.
fn open_pty(like: &Termios, size: &Winsize) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::{grantpt, ioctl_tiocgptpeer, openpt, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .context("cannot open a pseudo-terminal")?;
    grantpt(&master).context("cannot set up the pseudo-terminal")?;
    unlockpt(&master).context("cannot set up the pseudo-terminal")?;
    let slave = ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
        .context("cannot open the pseudo-terminal's other side")?;
    let _ = termios::tcsetattr(&slave, OptionalActions::Now, like);
    let _ = termios::tcsetwinsize(&master, *size);
    Ok((master, slave))
}

/// Runs `cmd` (ssh with a terminal) with the keyboard relayed, answering
/// the questions `questions` shows through the supervisor at `socket`;
/// returns ssh's exit code.
pub fn run(mut cmd: Command, socket: PathBuf, questions: Questions) -> anyhow::Result<i32> {
    let stdin = std::io::stdin();
    let like = termios::tcgetattr(stdin.as_fd()).context("cannot read the terminal's settings")?;
    let mut size = termios::tcgetwinsize(stdin.as_fd()).context("cannot read the window size")?;
    let (master, slave) = open_pty(&like, &size)?;
    cmd.stdin(Stdio::from(slave));
    // SAFETY: setsid and the ioctl are plain system calls, safe between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::io::stdin())?;
            Ok(())
        });
    }
    let raw = RawTerminal::enter()?;
    let mut child = cmd
        .spawn()
        .context("cannot run ssh; install openssh-client")?;
    // Drop the parent's copy of ssh's side (the Command holds it).
    drop(cmd);
    let mut relay = Relay {
        master,
        questions,
        socket,
        shown: None,
        shown_at: Instant::now(),
        last_key: None,
        later: Vec::new(),
    };
    let code = loop {
        if let Some(status) = child.try_wait().context("cannot wait for ssh")? {
            break status.code().unwrap_or(255);
        }
        if !relay.turn() {
            // The terminal went away: hang up ssh's side, and wait for it.
            drop(relay);
            let status = child.wait().context("cannot wait for ssh")?;
            drop(raw);
            return Ok(status.code().unwrap_or(255));
        }
        if let Ok(now) = termios::tcgetwinsize(stdin.as_fd()) {
            if (now.ws_row, now.ws_col) != (size.ws_row, size.ws_col) {
                size = now;
                let _ = termios::tcsetwinsize(&relay.master, size);
            }
        }
    };
    drop(raw);
    Ok(code)
}

struct Relay {
    master: OwnedFd,
    questions: Questions,
    socket: PathBuf,
    /// The question on the screen now, since when, and the last key typed
    /// while it shows.
    shown: Option<Question>,
    shown_at: Instant,
    last_key: Option<Instant>,
    /// Questions the person put off (Esc).
    later: Vec<u64>,
}

impl Relay {
    /// One turn: keys to ssh (or to the question), a question shown or
    /// taken away. `false` when the terminal is gone.
    fn turn(&mut self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let stdin = std::io::stdin();
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::new(&self.master, PollFlags::IN),
        ];
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        if poll(&mut fds, Some(&timeout)).is_err() {
            return true;
        }
        let (keys, echo) = (fds[0].revents(), fds[1].revents());
        if echo.contains(PollFlags::IN) {
            // ssh's side echoes nothing once ssh made it raw; drop what came
            // before that.
            let mut sink = [0u8; 4096];
            let _ = rustix::io::read(&self.master, &mut sink);
        }
        if keys.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            // Straight from the descriptor: a buffered reader could keep
            // bytes that poll would then never report.
            let mut buf = [0u8; 4096];
            let n = match rustix::io::read(&stdin, &mut buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => return true,
                Err(_) => return false,
            };
            if self.shown.is_some() {
                self.key(&buf[..n]);
            } else if write_all(&self.master, &buf[..n]).is_err() {
                return false;
            }
        }
        self.follow_questions();
        true
    }

    /// Shows the next question, or takes away one no longer waiting.
    fn follow_questions(&mut self) {
        let waiting = self.questions.get();
        if let Some(q) = &self.shown {
            if !waiting.iter().any(|w| w.id == q.id) {
                say(&format!(
                    "{}: no longer waiting (answered at another terminal, or withdrawn)",
                    for_terminal(&q.name)
                ));
                self.shown = None;
                self.redraw();
            }
            return;
        }
        if let Some(q) = waiting.into_iter().find(|q| !self.later.contains(&q.id)) {
            let mut err = std::io::stderr();
            let _ = err.write_all(prompt(&q).as_bytes());
            let _ = err.flush();
            self.shown = Some(q);
            self.shown_at = Instant::now();
            self.last_key = None;
        }
    }

    fn key(&mut self, bytes: &[u8]) {
        let Some(q) = self.shown.clone() else { return };
        let now = Instant::now();
        let rested = settled(now, self.shown_at, self.last_key);
        self.last_key = Some(now);
        match key(bytes) {
            Key::Answer(_) | Key::Later if !rested => {
                let _ = std::io::stderr().write_all(b"\x07");
            }
            Key::Other => {
                let _ = std::io::stderr().write_all(b"\x07");
            }
            Key::Later => {
                say(&format!(
                    "{}: not now (it stays unreachable unless another terminal answers)",
                    for_terminal(&q.name)
                ));
                self.later.push(q.id);
                self.shown = None;
                self.redraw();
            }
            Key::Answer(a) => {
                match control::answer(&self.socket, q.id, a) {
                    Ok(answered) => say(&for_terminal(&answered.message)),
                    Err(e) => say(&format!("cannot send the answer: {e}")),
                }
                self.shown = None;
                self.redraw();
            }
        }
    }

    /// Makes full-screen programs in the box draw their screen again over
    /// the question: a window one row smaller, then the right size.
    fn redraw(&self) {
        let Ok(size) = termios::tcgetwinsize(&self.master) else {
            return;
        };
        if size.ws_row < 2 {
            return;
        }
        let smaller = Winsize {
            ws_row: size.ws_row - 1,
            ..size
        };
        let _ = termios::tcsetwinsize(&self.master, smaller);
        std::thread::sleep(Duration::from_millis(150));
        let _ = termios::tcsetwinsize(&self.master, size);
    }
}

/// One line to the person (the terminal is raw).
fn say(line: &str) {
    let mut err = std::io::stderr();
    let _ = write!(err, "\r\nvibebox: {line}\r\n");
    let _ = err.flush();
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_answer_keys_answer() {
        assert_eq!(key(b"o"), Key::Answer(Answer::Once));
        assert_eq!(key(b"A"), Key::Answer(Answer::Always));
        assert_eq!(key(b"d"), Key::Answer(Answer::Deny));
        assert_eq!(key(b"n"), Key::Answer(Answer::Quiet));
        assert_eq!(key(b"\x1b"), Key::Later);
        // Typing on, pasting, arrow keys: nothing is answered.
        for other in [&b"y"[..], b"oa", b"\x1b[A", b"\r", b"", b"ok"] {
            assert_eq!(key(other), Key::Other, "{other:?}");
        }
    }

    #[test]
    fn a_key_answers_only_after_the_keyboard_rested() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Typed as the question appeared: no.
        assert!(!settled(at(100), t0, None));
        // Typed on after it appeared: no, until the keys stop for a while.
        assert!(!settled(at(900), t0, Some(at(800))));
        assert!(settled(at(1600), t0, Some(at(800))));
        // A first key after a pause: yes.
        assert!(settled(at(800), t0, None));
    }

    #[test]
    fn the_prompt_shows_the_name_escaped() {
        let p = prompt(&Question {
            id: 1,
            name: "evil\x1b]0;pwned\x07.example".into(),
        });
        assert!(!p.contains("\x1b]0"), "{p:?}");
        assert!(p.contains("[a] always"));
    }
}
