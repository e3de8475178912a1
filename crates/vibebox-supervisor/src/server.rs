//! The control server: serves [`crate::protocol`] from one shared state that
//! the supervisor updates as the machine starts, runs and stops.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::lease::Lease;
use crate::protocol::{read_line, Answer, Answered, Request, SessionState, Status};
use vibebox_net::ask::Asks;

/// What the server knows; changed only through [`Server::update`].
#[derive(Debug)]
pub struct Shared {
    /// What clients are told.
    pub status: Status,
    /// A client asked to stop: `Some(shutdown)`.
    pub stop: Option<bool>,
    /// Clients and grace.
    pub lease: Lease,
    /// Disk copies asked for (`vibebox fork`), for the supervisor's loop.
    pub copies: Vec<CopyJob>,
    /// A client waits for the shared SSH connection.
    pub ssh_wanted: bool,
    generation: u64,
}

/// A copy of the running machine's disk to make, and where to say how it went.
#[derive(Debug)]
pub struct CopyJob {
    /// The new file.
    pub dest: std::path::PathBuf,
    /// The new directory for the memory, when asked.
    pub memory: Option<std::path::PathBuf>,
    /// Gets `Err(why)` or `Ok(())`.
    pub done: std::sync::mpsc::Sender<Result<(), String>>,
}

/// Why the machine should go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A client asked (`vibebox stop`, `--shutdown` to power off).
    Requested {
        /// Power off instead of suspending.
        shutdown: bool,
    },
    /// Nobody held the session for its whole grace period.
    Idle,
}

/// What applies a reloaded config to the running box.
pub type ReloadFn = dyn Fn(&str) -> crate::protocol::Reloaded + Send + Sync;

/// What takes the person's answer to an ask-mode question.
pub type AnswerFn = dyn Fn(u64, Answer) -> Answered + Send + Sync;

/// A handle on the server's state (cheap to clone).
#[derive(Clone)]
pub struct Server {
    state: Arc<(Mutex<Shared>, Condvar)>,
    reload: Arc<Mutex<Option<Arc<ReloadFn>>>>,
    answer: Arc<Mutex<Option<Arc<AnswerFn>>>>,
    asks: Asks,
}

impl Server {
    /// A server for a session starting now, with supervisor process `pid`.
    pub fn new(pid: u32, grace: Duration) -> Server {
        let server = Server {
            state: Arc::new((
                Mutex::new(Shared {
                    status: Status {
                        state: SessionState::Starting,
                        clients: 0,
                        ssh_port: None,
                        ssh_error: None,
                        agent_port: None,
                        pid: Some(pid),
                        detail: None,
                        ports: Vec::new(),
                        guest_dir: None,
                        ask: false,
                        questions: Vec::new(),
                    },
                    stop: None,
                    lease: Lease::new(grace, Instant::now()),
                    copies: Vec::new(),
                    ssh_wanted: false,
                    generation: 0,
                }),
                Condvar::new(),
            )),
            reload: Arc::new(Mutex::new(None)),
            answer: Arc::new(Mutex::new(None)),
            asks: Asks::default(),
        };
        // The waiting questions go to the clients with the status.
        let state = Arc::downgrade(&server.state);
        server.asks.on_change(move |questions| {
            if let Some(state) = state.upgrade() {
                Server::update_state(&state, |s| s.status.questions = questions);
            }
        });
        server
    }

    /// Ask mode's questions of this session (the engines hold the lookups).
    pub fn asks(&self) -> Asks {
        self.asks.clone()
    }

    /// What `answer` requests run (none until the box runs).
    pub fn on_answer(&self, f: Arc<AnswerFn>) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// What `reload` requests run (none until the box runs).
    pub fn on_reload(&self, f: Arc<ReloadFn>) {
        *self.reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Changes the state and tells every attached client.
    pub fn update(&self, f: impl FnOnce(&mut Shared)) {
        Server::update_state(&self.state, f);
    }

    fn update_state(state: &(Mutex<Shared>, Condvar), f: impl FnOnce(&mut Shared)) {
        let (lock, cv) = state;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        s.status.clients = s.lease.clients();
        s.generation += 1;
        cv.notify_all();
    }

    /// Tells attached clients what the supervisor is doing.
    pub fn set_detail(&self, detail: &str) {
        let detail = detail.to_string();
        self.update(|s| s.status.detail = Some(detail));
    }

    /// Moves the session to `state`.
    pub fn set_state(&self, state: SessionState) {
        self.update(|s| {
            s.status.state = state;
            if state == SessionState::Running {
                s.status.detail = None;
                s.lease.ready(Instant::now());
            }
        });
    }

    fn snapshot(&self) -> (Status, u64) {
        let s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        (s.status.clone(), s.generation)
    }

    /// Whether a client waits for the shared SSH connection.
    pub fn ssh_wanted(&self) -> bool {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ssh_wanted
    }

    /// The status clients see now.
    pub fn status(&self) -> Status {
        self.snapshot().0
    }

    /// Whether a client asked to stop, or nobody held the session for its
    /// whole grace period: `Some(Stop)` when the machine should go down.
    pub fn should_stop(&self) -> Option<Stop> {
        let s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shutdown) = s.stop {
            Some(Stop::Requested { shutdown })
        } else if s.lease.idle(Instant::now()) {
            Some(Stop::Idle)
        } else {
            None
        }
    }

    /// Serves every connection on `listener`, each on its own thread.
    pub fn listen(&self, listener: UnixListener) {
        let server = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = server.clone();
                std::thread::spawn(move || s.serve(conn));
            }
        });
    }

    fn send(stream: &mut UnixStream, status: &Status) -> bool {
        let Ok(mut line) = serde_json::to_string(status) else {
            return false;
        };
        line.push('\n');
        stream.write_all(line.as_bytes()).is_ok()
    }

    /// Sends one answer line.
    fn reply(stream: &mut UnixStream, answer: &impl serde::Serialize) {
        if let Ok(mut line) = serde_json::to_string(answer) {
            line.push('\n');
            let _ = stream.write_all(line.as_bytes());
        }
    }

    /// Serves one control connection.
    fn serve(&self, mut stream: UnixStream) {
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        let request = read_line(&mut reader)
            .ok()
            .flatten()
            .and_then(|l| serde_json::from_str::<Request>(&l).ok());
        match request {
            None => {}
            Some(Request::Status) => {
                Server::send(&mut stream, &self.status());
            }
            Some(Request::Stop { shutdown }) => self.update(|s| s.stop = Some(shutdown)),
            Some(Request::Attach { answers, ssh }) => {
                if ssh {
                    self.update(|s| s.ssh_wanted = true);
                }
                if answers {
                    self.asks.add_asker();
                }
                self.attached(stream, reader);
                if answers {
                    self.asks.remove_asker();
                }
            }
            Some(Request::CopyDisk { dest, memory }) => {
                let answered = self.copy_disk(dest, memory);
                Server::reply(&mut stream, &answered);
            }
            Some(Request::Answer { id, answer }) => {
                let f = self
                    .answer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let answered = match f {
                    Some(f) => f(id, answer),
                    None => Answered {
                        ok: false,
                        message: "the box is not running".into(),
                    },
                };
                Server::reply(&mut stream, &answered);
            }
            Some(Request::Reload { config }) => {
                let f = self
                    .reload
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let answer = match f {
                    Some(f) => f(&config),
                    None => crate::protocol::Reloaded {
                        ok: false,
                        message: "the box is not running yet; the config applies when it starts"
                            .into(),
                    },
                };
                Server::reply(&mut stream, &answer);
            }
        }
    }

    /// Hands a disk copy to the supervisor's loop and waits for it.
    fn copy_disk(&self, dest: std::path::PathBuf, memory: Option<std::path::PathBuf>) -> Answered {
        let refuse = |message: String| Answered { ok: false, message };
        for path in std::iter::once(&dest).chain(&memory) {
            if !path.is_absolute() {
                return refuse("the copy's path must be absolute".into());
            }
            if std::fs::symlink_metadata(path).is_ok() {
                return refuse(format!("{} exists already", path.display()));
            }
        }
        if self.status().state != SessionState::Running {
            return refuse("the box is not running".into());
        }
        let (done, result) = std::sync::mpsc::channel();
        self.update(|s| s.copies.push(CopyJob { dest, memory, done }));
        match result.recv() {
            Ok(Ok(())) => Answered {
                ok: true,
                message: "copied".into(),
            },
            Ok(Err(why)) => refuse(why),
            Err(_) => refuse("the box stopped before the copy".into()),
        }
    }

    /// The disk copies asked for since the last call.
    pub fn take_copies(&self) -> Vec<CopyJob> {
        let (lock, _) = &*self.state;
        std::mem::take(&mut lock.lock().unwrap_or_else(|e| e.into_inner()).copies)
    }

    /// Holds one reference while the client's connection stays open, and
    /// sends it the status at every change.
    fn attached(&self, mut stream: UnixStream, mut reader: BufReader<UnixStream>) {
        self.update(|s| s.lease.attach());
        // A reader notices the client going away (EOF), even if it was
        // killed, and wakes the writer loop below.
        let gone = Arc::new(Mutex::new(false));
        let gone2 = gone.clone();
        let server = self.clone();
        std::thread::spawn(move || {
            while matches!(read_line(&mut reader), Ok(Some(_))) {}
            *gone2.lock().unwrap_or_else(|e| e.into_inner()) = true;
            server.update(|_| {});
        });
        let mut seen = u64::MAX;
        loop {
            let (status, generation) = self.snapshot();
            if *gone.lock().unwrap_or_else(|e| e.into_inner()) {
                break;
            }
            if generation != seen {
                seen = generation;
                if !Server::send(&mut stream, &status) {
                    break;
                }
            }
            let (lock, cv) = &*self.state;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            if guard.generation == seen {
                let _ = cv.wait_timeout(guard, Duration::from_millis(500));
            }
        }
        self.update(|s| s.lease.release(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Attachment};

    /// Waits (bounded) until the server at `socket` counts `n` clients.
    fn wait_for_clients(socket: &std::path::Path, n: u32) {
        let start = Instant::now();
        while protocol::status(socket).unwrap().clients != n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never {n} clients"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn clients_hold_references_until_they_go() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let server = Server::new(42, Duration::from_secs(3600));
        server.listen(UnixListener::bind(&socket).unwrap());
        let first = protocol::status(&socket).unwrap();
        assert_eq!(
            (first.state, first.clients, first.pid),
            (SessionState::Starting, 0, Some(42))
        );
        let mut a = Attachment::connect(&socket).unwrap();
        let mut b = Attachment::connect(&socket).unwrap();
        let wait = |n: u32| wait_for_clients(&socket, n);
        wait(2);
        server.set_state(SessionState::Running);
        let seen = std::iter::from_fn(|| a.next_status())
            .find(|s| s.state == SessionState::Running)
            .unwrap();
        assert_eq!(seen.state, SessionState::Running);
        assert!(b.next_status().is_some());
        drop(a);
        wait(1);
        drop(b);
        wait(0);
        assert_eq!(server.should_stop(), None, "grace not over");
        // Garbage and unknown requests are ignored; stop is obeyed.
        let send = |line: &[u8]| {
            let mut raw = UnixStream::connect(&socket).unwrap();
            raw.write_all(line).unwrap();
            let mut buf = [0u8; 16];
            let _ = std::io::Read::read(&mut raw, &mut buf);
        };
        send(b"{\"op\":\"format-disk\"}\n");
        assert_eq!(server.should_stop(), None);
        send(b"{\"op\":\"stop\"}\n");
        assert_eq!(
            server.should_stop(),
            Some(Stop::Requested { shutdown: false })
        );
    }

    #[test]
    fn answering_clients_get_the_questions_and_their_answers_count() {
        use vibebox_net::ask::Consult;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let server = Server::new(42, Duration::from_secs(3600));
        server.listen(UnixListener::bind(&socket).unwrap());
        let asks = server.asks();
        let answers = asks.clone();
        server.on_answer(Arc::new(move |id, a| match answers.answer(id, a) {
            Ok(name) => Answered {
                ok: true,
                message: name,
            },
            Err(e) => Answered {
                ok: false,
                message: e.to_string(),
            },
        }));
        // A plain client is nobody to ask.
        let _plain = Attachment::connect(&socket).unwrap();
        wait_for_clients(&socket, 1);
        assert!(matches!(asks.consult("a.example"), Consult::Deny(_)));
        let mut person = Attachment::connect_as(&socket, true).unwrap();
        let start = Instant::now();
        while asks.consult("a.example") != Consult::Wait {
            assert!(start.elapsed() < Duration::from_secs(10), "never an asker");
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = std::iter::from_fn(|| person.next_status())
            .find(|s| !s.questions.is_empty())
            .unwrap();
        assert_eq!(seen.questions[0].name, "a.example");
        let id = seen.questions[0].id;
        let a = protocol::answer(&socket, id, Answer::Once).unwrap();
        assert_eq!((a.ok, a.message.as_str()), (true, "a.example"));
        assert!(asks.allowed("a.example"));
        let again = protocol::answer(&socket, id, Answer::Deny).unwrap();
        assert!(!again.ok, "{again:?}");
        assert!(std::iter::from_fn(|| person.next_status()).any(|s| s.questions.is_empty()));
    }
}
