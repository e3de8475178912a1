//! Opening upstream connections without a host thread per connection.
//!
//! Names are resolved on the host by a small fixed pool of threads
//! ([`RESOLVER_THREADS`]; `getaddrinfo` blocks), and connections are opened
//! with non-blocking `connect(2)` that the engine's event loop polls, so 2000
//! connections hanging in their handshake cost 2000 file descriptors (under
//! the engine's connection cap), not 2000 threads.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use vibebox_core::policy::Policy;

/// Threads resolving names on the host, for the whole engine.
pub const RESOLVER_THREADS: usize = 4;
/// How long one upstream address may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one resolution.
pub type Resolved = io::Result<Vec<SocketAddr>>;

struct Job {
    name: String,
    port: u16,
    reply: Sender<Resolved>,
}

/// A fixed pool of resolver threads.
pub struct Resolver {
    jobs: Sender<Job>,
}

impl Resolver {
    /// Starts the pool. `hosts` are the user's overrides (honoured even for
    /// loopback); other answers go through `policy`'s rebinding protection.
    pub fn new(hosts: HashMap<String, IpAddr>, policy: Policy) -> Resolver {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..RESOLVER_THREADS {
            let rx = rx.clone();
            let hosts = hosts.clone();
            let policy = policy.clone();
            std::thread::spawn(move || loop {
                let job = {
                    let guard = rx.lock().unwrap_or_else(|e| e.into_inner());
                    guard.recv()
                };
                let Ok(job) = job else {
                    return;
                };
                let result = match hosts.get(&job.name) {
                    Some(ip) => Ok(vec![SocketAddr::new(*ip, job.port)]),
                    None => (job.name.as_str(), job.port)
                        .to_socket_addrs()
                        .map(|addrs| {
                            addrs
                                .filter(|a| a.is_ipv4() && policy.accept_upstream_answer(a.ip()))
                                .collect()
                        }),
                };
                let _ = job.reply.send(result);
            });
        }
        Resolver { jobs: tx }
    }

    /// Resolves `name` for `port`; the answer arrives on the receiver.
    pub fn resolve(&self, name: &str, port: u16) -> Receiver<Resolved> {
        let (reply, rx) = mpsc::channel();
        let _ = self.jobs.send(Job {
            name: name.to_string(),
            port,
            reply,
        });
        rx
    }
}

/// A connection being opened to the first address that answers.
pub struct Dialer {
    addrs: VecDeque<SocketAddr>,
    current: Option<(OwnedFd, Instant)>,
    last: io::Error,
}

impl Dialer {
    /// Tries `addrs` in order.
    pub fn new(addrs: Vec<SocketAddr>) -> Dialer {
        Dialer {
            addrs: addrs.into(),
            current: None,
            last: io::Error::new(
                io::ErrorKind::NotFound,
                "no acceptable address (rebinding protection)",
            ),
        }
    }

    /// The socket being connected, to wait for it to become writable.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.current.as_ref().map(|(fd, _)| fd.as_fd())
    }

    /// Advances: `Ok(Some(stream))` once connected (non-blocking),
    /// `Ok(None)` while pending, an error once every address failed.
    pub fn poll(&mut self) -> io::Result<Option<TcpStream>> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            if let Some((fd, started)) = &self.current {
                let mut fds = [PollFd::new(fd, PollFlags::OUT)];
                let zero = Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let ready = poll(&mut fds, Some(&zero)).unwrap_or(0) > 0;
                if ready {
                    let (fd, _) = self
                        .current
                        .take()
                        .ok_or_else(|| io::Error::other("no socket"))?;
                    match rustix::net::sockopt::socket_error(&fd)? {
                        Ok(()) => return Ok(Some(TcpStream::from(fd))),
                        Err(e) => self.last = e.into(),
                    }
                } else if started.elapsed() > CONNECT_TIMEOUT {
                    self.current = None;
                    self.last =
                        io::Error::new(io::ErrorKind::TimedOut, "the upstream did not answer");
                } else {
                    return Ok(None);
                }
            }
            let Some(addr) = self.addrs.pop_front() else {
                return Err(std::mem::replace(
                    &mut self.last,
                    io::Error::other("failed"),
                ));
            };
            let family = if addr.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            };
            let fd = rustix::net::socket_with(
                family,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )?;
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => return Ok(Some(TcpStream::from(fd))),
                Err(rustix::io::Errno::INPROGRESS) => self.current = Some((fd, Instant::now())),
                Err(e) => self.last = e.into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dials_the_first_address_that_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good = listener.local_addr().unwrap();
        // A port nobody listens on refuses at once; the next address answers.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut d = Dialer::new(vec![closed, good]);
        let start = Instant::now();
        let stream = loop {
            if let Some(s) = d.poll().unwrap() {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(stream.peer_addr().unwrap(), good);
        let mut d = Dialer::new(vec![closed]);
        let err = loop {
            match d.poll() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Ok(Some(_)) => panic!("connected to a closed port"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(Dialer::new(Vec::new()).poll().is_err());
    }

    #[test]
    fn the_resolver_honours_overrides() {
        let mut hosts = HashMap::new();
        hosts.insert("x.test".to_string(), "127.0.0.1".parse().unwrap());
        let policy = Policy::new(vibebox_core::policy::NetworkMode::Allowlist, Vec::new());
        let r = Resolver::new(hosts, policy);
        let got = r.resolve("x.test", 80).recv().unwrap().unwrap();
        assert_eq!(got, vec!["127.0.0.1:80".parse().unwrap()]);
    }
}
