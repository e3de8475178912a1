//! The engine against a guest TCP/IP stack (a second smoltcp) over the same
//! framing QEMU uses, with stand-in "internet" servers on 127.0.0.1 reached
//! through resolver overrides. Loopback only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use simple_dns::rdata::RData;
use simple_dns::{Packet, Question, CLASS, RCODE, TYPE};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use vibebox_core::policy::{NetworkEntry, NetworkMode, Policy, Verdict};
use vibebox_net::engine::{
    Engine, EngineConfig, FrameQueue, LivePolicy, PolicyUpdate, DEFAULT_MAX_CONNECTIONS, GATEWAY,
    GUEST,
};
use vibebox_net::log::NetworkEvent;

/// The guest: a smoltcp stack on the other end of the engine's stream.
struct Guest {
    stream: UnixStream,
    inbuf: Vec<u8>,
    dev: FrameQueue,
    iface: Interface,
    sockets: SocketSet<'static>,
    epoch: StdInstant,
    next_port: u16,
}

impl Guest {
    fn new(stream: UnixStream) -> Guest {
        stream.set_nonblocking(true).unwrap();
        let mut dev = FrameQueue::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            0x52, 0x54, 0, 0x12, 0x34, 0x56,
        ])));
        let mut iface = Interface::new(cfg, &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GUEST), 24));
        });
        iface.routes_mut().add_default_ipv4_route(GATEWAY).unwrap();
        Guest {
            stream,
            inbuf: Vec::new(),
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            epoch: StdInstant::now(),
            next_port: 40000,
        }
    }

    fn step(&mut self) {
        let mut chunk = [0u8; 65536];
        while let Ok(n) = self.stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
        while self.inbuf.len() >= 4 {
            let len = u32::from_be_bytes(self.inbuf[..4].try_into().unwrap()) as usize;
            if self.inbuf.len() < 4 + len {
                break;
            }
            self.dev.rx.push_back(self.inbuf[4..4 + len].to_vec());
            self.inbuf.drain(..4 + len);
        }
        let now = Instant::from_millis(self.epoch.elapsed().as_millis() as i64);
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for f in self.dev.tx.drain(..) {
            let mut out = (f.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&f);
            let mut data = &out[..];
            while !data.is_empty() {
                match self.stream.write(data) {
                    Ok(n) => data = &data[n..],
                    Err(_) => std::thread::sleep(Duration::from_micros(100)),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }

    fn until(&mut self, limit: Duration, mut f: impl FnMut(&mut Guest) -> bool) -> bool {
        let start = StdInstant::now();
        while start.elapsed() < limit {
            self.step();
            if f(self) {
                return true;
            }
        }
        false
    }

    /// Resolves `name` through the engine's DNS: Ok(address) or Err(rcode).
    fn resolve(&mut self, name: &str) -> Result<Ipv4Addr, RCODE> {
        let h = self.send_query(name);
        self.await_reply(h)
    }

    /// Waits (bounded) for the reply to the query of `h`.
    fn await_reply(&mut self, h: SocketHandle) -> Result<Ipv4Addr, RCODE> {
        let mut reply = None;
        self.until(Duration::from_secs(5), |g| {
            reply = g.dns_reply(h);
            reply.is_some()
        });
        reply.expect("a DNS reply")
    }

    /// Sends a type A query for `name` to the engine's DNS.
    fn send_query(&mut self, name: &str) -> SocketHandle {
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        );
        self.next_port += 1;
        s.bind(self.next_port).unwrap();
        let mut q = Packet::new_query(7);
        q.questions.push(Question::new(
            simple_dns::Name::new_unchecked(name),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let bytes = q.build_bytes_vec().unwrap();
        s.send_slice(&bytes, IpEndpoint::new(IpAddress::Ipv4(GATEWAY), 53))
            .unwrap();
        self.sockets.add(s)
    }

    /// The reply to the query of `h`, once it came: Ok(address) or Err(rcode).
    fn dns_reply(&mut self, h: SocketHandle) -> Option<Result<Ipv4Addr, RCODE>> {
        let s = self.sockets.get_mut::<udp::Socket>(h);
        let mut buf = [0u8; 1500];
        let (n, _) = s.recv_slice(&mut buf).ok()?;
        let p = Packet::parse(&buf[..n]).expect("a DNS reply");
        if p.rcode() != RCODE::NoError {
            return Some(Err(p.rcode()));
        }
        Some(
            p.answers
                .iter()
                .find_map(|a| match &a.rdata {
                    RData::A(a) => Some(Ipv4Addr::from(a.address)),
                    _ => None,
                })
                .ok_or(RCODE::NoError),
        )
    }

    fn connect(&mut self, ip: Ipv4Addr, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        self.next_port += 1;
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(ip), port),
            self.next_port,
        )
        .unwrap();
        self.sockets.add(s)
    }

    fn state(&self, h: SocketHandle) -> tcp::State {
        self.sockets.get::<tcp::Socket>(h).state()
    }

    /// Sends `request` and reads until the peer closes; None if reset/closed without data.
    fn exchange(&mut self, h: SocketHandle, request: &[u8]) -> Vec<u8> {
        self.until(Duration::from_secs(10), |g| {
            g.state(h) == tcp::State::Established || g.state(h) == tcp::State::Closed
        });
        if self.state(h) == tcp::State::Established {
            self.sockets
                .get_mut::<tcp::Socket>(h)
                .send_slice(request)
                .unwrap();
        }
        let mut got = Vec::new();
        self.until(Duration::from_secs(10), |g| {
            let s = g.sockets.get_mut::<tcp::Socket>(h);
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            !s.may_recv() || s.state() == tcp::State::Closed
        });
        got
    }
}

/// A stand-in internet server on 127.0.0.1: answers every request with its body, then closes.
fn server(body: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(20) {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, seen)
}

fn start(entries: &[&str], hosts: &[(&str, &str)]) -> (Guest, Arc<Mutex<Vec<NetworkEvent>>>) {
    start_with(entries, hosts, Vec::new())
}

fn start_with(
    entries: &[&str],
    hosts: &[(&str, &str)],
    forwards: Vec<(TcpListener, u16)>,
) -> (Guest, Arc<Mutex<Vec<NetworkEvent>>>) {
    start_capped(entries, hosts, forwards, 256)
}

fn allowlist(entries: &[&str]) -> Policy {
    Policy::new(
        NetworkMode::Allowlist,
        entries
            .iter()
            .map(|e| NetworkEntry::parse(e).unwrap())
            .collect(),
    )
}

fn host_map(hosts: &[(&str, &str)]) -> HashMap<String, IpAddr> {
    hosts
        .iter()
        .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
        .collect()
}

fn start_capped(
    entries: &[&str],
    hosts: &[(&str, &str)],
    forwards: Vec<(TcpListener, u16)>,
    max_connections: usize,
) -> (Guest, Arc<Mutex<Vec<NetworkEvent>>>) {
    start_engine(entries, hosts, forwards, max_connections, None)
}

fn start_engine(
    entries: &[&str],
    hosts: &[(&str, &str)],
    forwards: Vec<(TcpListener, u16)>,
    max_connections: usize,
    live: Option<LivePolicy>,
) -> (Guest, Arc<Mutex<Vec<NetworkEvent>>>) {
    let policy = allowlist(entries);
    let hosts = host_map(hosts);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let engine = Engine::new(
        EngineConfig {
            policy,
            hosts,
            max_connections,
        },
        Box::new(move |e: &NetworkEvent| ev.lock().unwrap().push(e.clone())),
    )
    .with_forwards(forwards);
    let engine = match live {
        Some(live) => engine.with_live_policy(live),
        None => engine,
    };
    run_engine(engine, events)
}

/// An engine of `policy` whose decisions go to the returned list.
fn new_engine(policy: Policy, hosts: &[(&str, &str)]) -> (Engine, Arc<Mutex<Vec<NetworkEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let engine = Engine::new(
        EngineConfig {
            policy,
            hosts: host_map(hosts),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        },
        Box::new(move |e: &NetworkEvent| ev.lock().unwrap().push(e.clone())),
    );
    (engine, events)
}

fn run_engine(
    engine: Engine,
    events: Arc<Mutex<Vec<NetworkEvent>>>,
) -> (Guest, Arc<Mutex<Vec<NetworkEvent>>>) {
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::spawn(move || engine.run(a));
    (Guest::new(b), events)
}

#[test]
fn allowed_names_are_relayed_and_blocked_ones_do_not_resolve() {
    let (port, seen) = server("hello from the stand-in internet");
    let (mut g, events) = start(
        &["allowed.test"],
        &[("allowed.test", "127.0.0.1"), ("blocked.test", "127.0.0.1")],
    );
    let ip = g.resolve("allowed.test").expect("allowed name resolves");
    assert!(ip.octets()[0] == 198, "synthetic address: {ip}");
    let h = g.connect(ip, port);
    let reply = g.exchange(h, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("hello from the stand-in internet"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(g.resolve("blocked.test"), Err(RCODE::NameError));
    let ev = events.lock().unwrap();
    assert!(ev
        .iter()
        .any(|e| e.name.as_deref() == Some("blocked.test") && e.verdict == Verdict::Deny));
    assert!(ev
        .iter()
        .any(|e| e.name.as_deref() == Some("allowed.test") && e.verdict == Verdict::Allow));
}

#[test]
fn raw_addresses_and_the_engine_itself_are_refused_at_once() {
    let (port, seen) = server("never");
    let (mut g, _events) = start(&["allowed.test"], &[("allowed.test", "127.0.0.1")]);
    for ip in [
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(127, 0, 0, 1),
        GATEWAY,
        Ipv4Addr::new(198, 18, 99, 99),
    ] {
        let h = g.connect(ip, port);
        let start = StdInstant::now();
        let closed = g.until(Duration::from_secs(5), |g| g.state(h) == tcp::State::Closed);
        assert!(closed, "{ip} was not refused");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "refused at once, not after a timeout"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn host_header_and_sni_must_name_the_resolved_host() {
    let (port, seen) = server("secret");
    let (mut g, events) = start(&["allowed.test"], &[("allowed.test", "127.0.0.1")]);
    let ip = g.resolve("allowed.test").unwrap();
    let h = g.connect(ip, port);
    let reply = g.exchange(h, b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n");
    assert!(reply.is_empty(), "smuggled Host got an answer");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the server"
    );
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.reason.contains("names evil.test")));
}

#[test]
fn rebinding_to_internal_addresses_is_refused_without_an_override() {
    // `localhost` resolves (on the host) to 127.0.0.1: an allowed name whose
    // upstream answer points at the host's loopback is refused.
    let (port, seen) = server("host loopback service");
    let (mut g, _events) = start(&["localhost"], &[]);
    let ip = g.resolve("localhost").unwrap();
    let h = g.connect(ip, port);
    let reply = g.exchange(h, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(reply.is_empty());
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn exposed_guest_ports_are_reachable_from_host_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let (mut g, _events) = start_with(&[], &[], vec![(listener, 8000)]);
    // The guest serves on port 8000.
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 65536]),
    );
    s.listen(8000).unwrap();
    let h = g.sockets.add(s);
    let client = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"ping from the host").unwrap();
        let mut got = String::new();
        let _ = c.read_to_string(&mut got);
        got
    });
    let mut heard = Vec::new();
    g.until(Duration::from_secs(10), |g| {
        let sock = g.sockets.get_mut::<tcp::Socket>(h);
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            heard.extend_from_slice(&buf[..n]);
        }
        if heard.ends_with(b"host") && sock.can_send() {
            sock.send_slice(b"pong from the guest").unwrap();
            sock.close();
            return true;
        }
        false
    });
    g.until(Duration::from_secs(5), |g| {
        g.state(h) == tcp::State::Closed || g.state(h) == tcp::State::TimeWait
    });
    // Keep the guest stack turning until the host side has read everything.
    let deadline = StdInstant::now() + Duration::from_secs(5);
    while !client.is_finished() && StdInstant::now() < deadline {
        g.step();
    }
    assert_eq!(String::from_utf8_lossy(&heard), "ping from the host");
    assert_eq!(client.join().unwrap(), "pong from the guest");
}

/// Every byte a stand-in server receives, per connection, in order.
fn recorder() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(50) {
            let Ok(mut c) = c else { continue };
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, seen)
}

fn send(g: &mut Guest, h: SocketHandle, bytes: &[u8]) {
    g.until(Duration::from_secs(10), |g| {
        g.state(h) == tcp::State::Established || g.state(h) == tcp::State::Closed
    });
    g.sockets
        .get_mut::<tcp::Socket>(h)
        .send_slice(bytes)
        .unwrap();
}

fn refused(events: &Arc<Mutex<Vec<NetworkEvent>>>, words: &str) -> bool {
    events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.verdict == Verdict::Deny && e.reason.contains(words))
}

#[test]
fn an_incomplete_request_that_pauses_is_never_relayed() {
    let (port, seen) = recorder();
    let (mut g, events) = start(&["allowed.test"], &[("allowed.test", "127.0.0.1")]);
    let ip = g.resolve("allowed.test").unwrap();
    let h = g.connect(ip, port);
    send(&mut g, h, b"GET / HTTP/1.1\r\nHost: evil.test\r\nX-Pad: ");
    // The old engine relayed unchecked bytes after a 300 ms pause.
    g.until(Duration::from_secs(2), |_| false);
    assert!(seen.lock().unwrap().is_empty(), "bytes went out unchecked");
    // Incomplete at its time limit: reset and logged, still nothing sent.
    let closed = g.until(
        vibebox_net::sniff::CLASSIFY_TIMEOUT + Duration::from_secs(5),
        |g| g.state(h) == tcp::State::Closed,
    );
    assert!(closed, "the connection was not reset");
    assert!(seen.lock().unwrap().is_empty());
    assert!(refused(&events, "incomplete"));
}

#[test]
fn pipelined_and_unrecognised_bytes_are_checked() {
    let (port, seen) = recorder();
    let (mut g, events) = start(&["allowed.test"], &[("allowed.test", "127.0.0.1")]);
    let ip = g.resolve("allowed.test").unwrap();
    let h = g.connect(ip, port);
    let good = b"GET /a HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    let evil = b"GET /b HTTP/1.1\r\nHost: evil.test\r\n\r\n";
    send(&mut g, h, good);
    g.until(Duration::from_secs(2), |_| {
        seen.lock().unwrap().len() == good.len()
    });
    send(&mut g, h, evil);
    g.until(Duration::from_secs(5), |g| g.state(h) == tcp::State::Closed);
    g.until(Duration::from_millis(500), |_| false);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &good[..],
        "only the checked request went out"
    );
    assert!(refused(&events, "names evil.test"));
    // Bytes that are neither TLS, HTTP, SSH nor git: refused, nothing sent.
    seen.lock().unwrap().clear();
    for bad in [
        &b"\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x01binary",
    ] {
        let h = g.connect(ip, port);
        send(&mut g, h, bad);
        let closed = g.until(Duration::from_secs(5), |g| g.state(h) == tcp::State::Closed);
        assert!(closed, "{bad:?} was not reset");
    }
    g.until(Duration::from_millis(500), |_| false);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

#[test]
fn server_first_protocols_work_and_hold_the_guest_until_the_server_speaks() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let _ = c.write_all(b"220 allowed.test ESMTP ready\r\n");
            let mut buf = [0u8; 256];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    let (mut g, _events) = start(&["allowed.test"], &[("allowed.test", "127.0.0.1")]);
    let ip = g.resolve("allowed.test").unwrap();
    let h = g.connect(ip, port);
    let mut got = Vec::new();
    let mut sent = false;
    g.until(Duration::from_secs(10), |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        let mut buf = [0u8; 256];
        while let Ok(n) = s.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        if !sent && got.ends_with(b"\r\n") && s.can_send() {
            s.send_slice(b"EHLO guest\r\n").unwrap();
            sent = true;
        }
        String::from_utf8_lossy(&got).contains("EHLO guest")
    });
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("220 allowed.test"), "{text}");
    assert!(text.contains("EHLO guest"), "{text}");
}

#[test]
fn connections_beyond_the_cap_are_reset_and_logged() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // Accepts and holds every connection.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().take(20) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let (mut g, events) = start_capped(
        &["allowed.test"],
        &[("allowed.test", "127.0.0.1")],
        Vec::new(),
        4,
    );
    let ip = g.resolve("allowed.test").unwrap();
    let handles: Vec<_> = (0..8).map(|_| g.connect(ip, port)).collect();
    let count = |g: &Guest, s: tcp::State| handles.iter().filter(|h| g.state(**h) == s).count();
    g.until(Duration::from_secs(10), |g| {
        count(g, tcp::State::Established) + count(g, tcp::State::Closed) == 8
    });
    for h in &handles {
        if g.state(*h) == tcp::State::Established {
            send(&mut g, *h, b"SSH-2.0-guest\r\n");
        }
    }
    g.until(Duration::from_secs(2), |_| false);
    assert_eq!(
        count(&g, tcp::State::Established),
        4,
        "exactly the cap is open"
    );
    assert_eq!(count(&g, tcp::State::Closed), 4, "the rest were reset");
    assert!(refused(&events, "too many connections"));
}

/// The engine's threads while the guest holds many pending upstream connects:
/// connects are polled, never one thread each.
#[test]
fn pending_connects_cost_no_threads() {
    // A listener whose accept queue is full drops further SYNs: connects to it
    // stay pending (loopback only).
    let fd = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap()).unwrap();
    rustix::net::listen(&fd, 0).unwrap();
    let listener = TcpListener::from(fd);
    let port = listener.local_addr().unwrap().port();
    let _fill: Vec<_> = (0..4)
        .filter_map(|_| {
            let s = socket2_connect_nonblocking(port);
            std::thread::sleep(Duration::from_millis(20));
            s
        })
        .collect();
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let (mut g, _events) = start_capped(
        &["allowed.test"],
        &[("allowed.test", "127.0.0.1")],
        Vec::new(),
        1000,
    );
    let ip = g.resolve("allowed.test").unwrap();
    let before = threads();
    let handles: Vec<_> = (0..200).map(|_| g.connect(ip, port)).collect();
    g.until(Duration::from_secs(10), |g| {
        handles
            .iter()
            .filter(|h| g.state(**h) == tcp::State::Established)
            .count()
            == 200
    });
    for h in &handles {
        let _ = g
            .sockets
            .get_mut::<tcp::Socket>(*h)
            .send_slice(b"SSH-2.0-guest\r\n");
    }
    g.until(Duration::from_secs(3), |_| false);
    let during = threads();
    eprintln!("threads: {before} before, {during} with 200 pending connects");
    assert!(during < before + 20, "{before} -> {during} threads");
}

fn socket2_connect_nonblocking(port: u16) -> Option<rustix::fd::OwnedFd> {
    let fd = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .ok()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let _ = rustix::net::connect(&fd, &addr);
    Some(fd)
}

/// `vibebox reload`: a new policy reaches the running engine; a connection
/// it refuses is reset at once, the name no longer resolves, and the name it
/// adds does.
#[test]
fn a_reloaded_policy_closes_what_it_refuses_and_opens_what_it_adds() {
    let (port, seen) = recorder();
    let hosts = [("allowed.test", "127.0.0.1"), ("later.test", "127.0.0.1")];
    let live = LivePolicy::default();
    let (mut g, events) = start_engine(
        &["allowed.test"],
        &hosts,
        Vec::new(),
        DEFAULT_MAX_CONNECTIONS,
        Some(live.clone()),
    );
    assert_eq!(g.resolve("later.test"), Err(RCODE::NameError));
    let ip = g.resolve("allowed.test").unwrap();
    let h = g.connect(ip, port);
    send(&mut g, h, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
    assert!(g.until(Duration::from_secs(10), |_| !seen
        .lock()
        .unwrap()
        .is_empty()));
    assert_eq!(g.state(h), tcp::State::Established);

    live.set(PolicyUpdate {
        policy: allowlist(&["later.test"]),
        hosts: host_map(&hosts),
    });
    assert!(
        g.until(Duration::from_secs(10), |g| g.state(h)
            == tcp::State::Closed),
        "the refused connection stays open: {:?}",
        g.state(h)
    );
    assert_eq!(g.resolve("allowed.test"), Err(RCODE::NameError));
    assert!(g.resolve("later.test").is_ok());
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.reason.contains("reloaded policy")
                && e.name.as_deref() == Some("allowed.test"))
    );
}

/// Ask mode: an unlisted name waits for the person; "once" answers the held
/// lookup and opens connections to the name; "deny" sticks; with nobody to
/// ask, a lookup is refused at once; a listed name never asks.
#[test]
fn ask_mode_holds_a_lookup_until_the_person_answers() {
    use vibebox_net::ask::{Answer, Asks};
    let (port, seen) = server("hello after asking");
    let hosts = [
        ("listed.test", "127.0.0.1"),
        ("asked.test", "127.0.0.1"),
        ("denied.test", "127.0.0.1"),
    ];
    let mut policy = allowlist(&["listed.test"]);
    policy.mode = NetworkMode::Ask;
    let asks = Asks::default();
    let live = LivePolicy::default();
    let (engine, events) = new_engine(policy, &hosts);
    let engine = engine
        .with_asks(asks.clone())
        .with_live_policy(live.clone());
    let (mut g, events) = run_engine(engine, events);

    // Nobody attached: refused at once, and logged so.
    assert_eq!(g.resolve("asked.test"), Err(RCODE::NameError));
    assert!(asks.waiting().is_empty());
    assert!(refused(&events, "nobody is attached"));
    assert!(g.resolve("listed.test").is_ok());

    asks.add_asker();
    let h = g.send_query("asked.test");
    assert!(
        g.until(Duration::from_secs(5), |_| !asks.waiting().is_empty()),
        "no question was asked"
    );
    // The lookup is held, not answered, while the question waits.
    assert!(!g.until(Duration::from_millis(500), |g| g.dns_reply(h).is_some()));
    let q = asks.waiting();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].name, "asked.test");
    assert!(g.resolve("listed.test").is_ok(), "other lookups go on");
    asks.answer(q[0].id, Answer::Once).unwrap();
    let ip = g
        .await_reply(h)
        .expect("the held lookup is answered with an address");
    let c = g.connect(ip, port);
    let text =
        String::from_utf8_lossy(&g.exchange(c, b"GET / HTTP/1.1\r\nHost: asked.test\r\n\r\n"))
            .into_owned();
    assert!(text.contains("hello after asking"), "{text}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Denied: the held lookup fails, and later ones fail without a question.
    let h = g.send_query("denied.test");
    assert!(g.until(Duration::from_secs(5), |_| !asks.waiting().is_empty()));
    let q = asks.waiting();
    asks.answer(q[0].id, Answer::Deny).unwrap();
    let reply = g.await_reply(h);
    assert_eq!(reply, Err(RCODE::NameError));
    assert_eq!(g.resolve("denied.test"), Err(RCODE::NameError));
    assert!(asks.waiting().is_empty());
    assert!(refused(&events, "denied by the person"));

    // The last terminal leaves while a question waits: the lookup fails.
    let h = g.send_query("gone.test");
    assert!(g.until(Duration::from_secs(5), |_| !asks.waiting().is_empty()));
    asks.remove_asker();
    let reply = g.await_reply(h);
    assert_eq!(reply, Err(RCODE::NameError));

    // A reload out of ask mode refuses what was still waiting.
    asks.add_asker();
    let h = g.send_query("reloaded.test");
    assert!(g.until(Duration::from_secs(5), |_| !asks.waiting().is_empty()));
    live.set(PolicyUpdate {
        policy: allowlist(&["listed.test"]),
        hosts: host_map(&hosts),
    });
    let reply = g.await_reply(h);
    assert_eq!(reply, Err(RCODE::NameError));
    assert!(refused(&events, "reloaded policy"));
}
