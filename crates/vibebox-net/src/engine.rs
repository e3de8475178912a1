//! The packet engine: a user-space TCP/IP stack (smoltcp) on the guest's NIC.
//!
//! QEMU hands the guest's Ethernet frames over a unix stream (`-netdev stream`,
//! each frame preceded by its length as 4 big-endian bytes). The engine is the
//! guest's gateway and DNS server. A TCP connection from the guest is accepted
//! only when the policy allows it — to a synthetic address whose name is
//! allowed on that port, or to a raw address an IP/CIDR entry allows — and is
//! then relayed through a host socket that the engine opens itself, to the
//! name resolved on the host. Everything else gets a TCP reset (or, for UDP,
//! an ICMP port unreachable) at once. Every decision is logged.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpListenEndpoint, IpProtocol, Ipv4Packet, TcpPacket,
};
use vibebox_core::policy::{Policy, Verdict};

use crate::log::{EventKind, NetworkEvent};
use crate::sniff::{claim, Claim};
use crate::synthetic::SyntheticPool;

/// The engine's own address on the guest's network (gateway and DNS).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
/// The guest's address.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 15);
/// The prefix length of the guest's network.
pub const PREFIX: u8 = 24;
/// The engine's MAC address.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x76, 0x62, 0x02];

/// How long the engine waits for the first bytes of a connection (to check a
/// TLS SNI or HTTP Host) before connecting anyway (server-speaks-first protocols).
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(300);
const BUF: usize = 256 * 1024;

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The policy.
    pub policy: Policy,
    /// Resolver overrides (`[network] hosts`): the user's explicit choice,
    /// honoured even for loopback.
    pub hosts: HashMap<String, IpAddr>,
}

/// A smoltcp device made of two frame queues: frames received (from QEMU)
/// and frames to send. Public so that tests can build a guest stack on it.
#[derive(Debug, Default)]
pub struct FrameQueue {
    /// Frames waiting to be processed by the stack.
    pub rx: std::collections::VecDeque<Vec<u8>>,
    /// Frames the stack produced, to be written out.
    pub tx: Vec<Vec<u8>>,
}

/// A received frame.
pub struct Rx(Vec<u8>);
/// Room for one frame to send.
pub struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl Device for FrameQueue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// Where a guest connection goes, once allowed.
#[derive(Debug, Clone)]
enum Target {
    /// A synthetic address: this name, resolved on the host.
    Name(String),
    /// A raw address allowed by an IP/CIDR entry.
    Addr(Ipv4Addr),
    /// An inbound forward from the host's loopback to a guest port.
    Forward,
}

impl Target {
    fn name(&self) -> Option<String> {
        match self {
            Target::Name(n) => Some(n.clone()),
            _ => None,
        }
    }
}

enum Phase {
    /// Waiting for the handshake and the first bytes.
    Waiting { since: StdInstant, first: Vec<u8> },
    /// The host connection is being opened.
    Connecting {
        first: Vec<u8>,
        result: Receiver<io::Result<TcpStream>>,
    },
    /// Relaying both ways.
    Relaying {
        host: TcpStream,
        to_host: Vec<u8>,
        host_eof: bool,
    },
    /// Finished: remove.
    Done,
}

struct Conn {
    handle: SocketHandle,
    target: Target,
    dest: SocketAddr,
    phase: Phase,
    up: u64,
    down: u64,
}

/// The engine of one session.
pub struct Engine {
    cfg: EngineConfig,
    pool: SyntheticPool,
    iface: Interface,
    device: FrameQueue,
    sockets: SocketSet<'static>,
    dns: SocketHandle,
    conns: Vec<Conn>,
    forwards: Vec<(std::net::TcpListener, u16)>,
    next_local_port: u16,
    log: Box<dyn FnMut(&NetworkEvent) + Send>,
    epoch: StdInstant,
}

fn now_event(
    kind: EventKind,
    name: Option<String>,
    destination: String,
    verdict: Verdict,
    reason: &str,
) -> NetworkEvent {
    NetworkEvent {
        time: jiff::Timestamp::now().to_string(),
        kind,
        name,
        destination,
        verdict,
        reason: reason.to_string(),
        bytes_up: 0,
        bytes_down: 0,
    }
}

impl Engine {
    /// A new engine; `log` receives every decision.
    pub fn new(cfg: EngineConfig, log: Box<dyn FnMut(&NetworkEvent) + Send>) -> Engine {
        let mut device = FrameQueue::default();
        let epoch = StdInstant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = u64::from(std::process::id()) ^ 0x5eed;
        let mut iface = Interface::new(config, &mut device, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(GATEWAY), PREFIX));
        });
        // Accept packets for any address routed through ourselves: the engine
        // answers for every destination, and decides per connection.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        let mut sockets = SocketSet::new(Vec::new());
        let dns_socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 64 * 1024]),
        );
        let dns = sockets.add(dns_socket);
        if let Err(e) = sockets
            .get_mut::<udp::Socket>(dns)
            .bind((IpAddress::Ipv4(GATEWAY), 53))
        {
            // Cannot happen with a fresh socket; keep going without DNS.
            let _ = e;
        }
        Engine {
            cfg,
            pool: SyntheticPool::default(),
            iface,
            device,
            sockets,
            dns,
            conns: Vec::new(),
            forwards: Vec::new(),
            next_local_port: 49152,
            log,
            epoch,
        }
    }

    /// Forwards connections accepted on each listener (on the host's loopback)
    /// to the paired guest port, through the same engine.
    pub fn with_forwards(mut self, forwards: Vec<(std::net::TcpListener, u16)>) -> Engine {
        for (l, _) in &forwards {
            let _ = l.set_nonblocking(true);
        }
        self.forwards = forwards;
        self
    }

    /// Accepts pending host connections of the forwards; returns whether any came.
    fn accept_forwards(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.forwards.len() {
            while let Ok((host, from)) = self.forwards[i].0.accept() {
                any = true;
                let guest_port = self.forwards[i].1;
                let _ = host.set_nonblocking(true);
                let _ = host.set_nodelay(true);
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; BUF]),
                    tcp::SocketBuffer::new(vec![0; BUF]),
                );
                self.next_local_port = if self.next_local_port >= 65000 {
                    49152
                } else {
                    self.next_local_port + 1
                };
                let dest = SocketAddr::new(IpAddr::V4(GUEST), guest_port);
                if socket
                    .connect(
                        self.iface.context(),
                        (IpAddress::Ipv4(GUEST), guest_port),
                        (IpAddress::Ipv4(GATEWAY), self.next_local_port),
                    )
                    .is_err()
                {
                    continue;
                }
                let handle = self.sockets.add(socket);
                (self.log)(&now_event(
                    EventKind::Tcp,
                    None,
                    format!("{from} -> guest:{guest_port}"),
                    Verdict::Allow,
                    "exposed port",
                ));
                self.conns.push(Conn {
                    handle,
                    target: Target::Forward,
                    dest,
                    phase: Phase::Relaying {
                        host,
                        to_host: Vec::new(),
                        host_eof: false,
                    },
                    up: 0,
                    down: 0,
                });
            }
        }
        any
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as i64)
    }

    /// Decides a new TCP connection from the guest to `dst`:`port`.
    fn decide_tcp(&mut self, dst: Ipv4Addr, port: u16) -> Option<Target> {
        let (target, verdict, reason, name) = if SyntheticPool::in_range(dst) {
            match self.pool.name_of(dst).map(str::to_string) {
                Some(name) => {
                    let v = self.cfg.policy.decide_name(&name, Some(port));
                    (
                        Target::Name(name.clone()),
                        v,
                        if v == Verdict::Allow {
                            "allowed name"
                        } else {
                            "port not allowed for this name"
                        },
                        Some(name),
                    )
                }
                None => (
                    Target::Addr(dst),
                    Verdict::Deny,
                    "synthetic address of no name",
                    None,
                ),
            }
        } else {
            let v = self.cfg.policy.decide_ip(IpAddr::V4(dst), port);
            (
                Target::Addr(dst),
                v,
                if v == Verdict::Allow {
                    "allowed address"
                } else {
                    "raw address not allowed"
                },
                None,
            )
        };
        (self.log)(&now_event(
            EventKind::Tcp,
            name,
            format!("{dst}:{port}"),
            verdict,
            reason,
        ));
        (verdict == Verdict::Allow).then_some(target)
    }

    /// Looks at a frame from the guest before the stack does: a TCP SYN to an
    /// allowed destination gets a listening socket; anything else finds none
    /// and is reset by the stack.
    fn inspect(&mut self, frame: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            if eth.ethertype() == EthernetProtocol::Ipv6 {
                (self.log)(&now_event(
                    EventKind::Tcp,
                    None,
                    "IPv6".into(),
                    Verdict::Deny,
                    "IPv6 is not routed",
                ));
            }
            return;
        }
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            return;
        };
        let dst: Ipv4Addr = ip.dst_addr();
        if ip.next_header() == IpProtocol::Udp && dst != GATEWAY {
            (self.log)(&now_event(
                EventKind::Udp,
                None,
                format!("{dst}"),
                Verdict::Deny,
                "UDP other than DNS to the engine",
            ));
            return;
        }
        if ip.next_header() != IpProtocol::Tcp {
            return;
        }
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return;
        };
        if !tcp.syn() || tcp.ack() {
            return;
        }
        let src = SocketAddr::new(IpAddr::V4(ip.src_addr()), tcp.src_port());
        let dest = SocketAddr::new(IpAddr::V4(dst), tcp.dst_port());
        let known = self.conns.iter().any(|c| {
            c.dest == dest
                && self
                    .sockets
                    .get::<tcp::Socket>(c.handle)
                    .remote_endpoint()
                    .map(|e| e.port)
                    == Some(src.port())
        });
        let listening = self.conns.iter().any(|c| {
            c.dest == dest
                && self.sockets.get::<tcp::Socket>(c.handle).state() == tcp::State::Listen
        });
        if known || listening {
            return;
        }
        let Some(target) = self.decide_tcp(dst, tcp.dst_port()) else {
            return;
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUF]),
            tcp::SocketBuffer::new(vec![0; BUF]),
        );
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(dst)),
            port: tcp.dst_port(),
        };
        if socket.listen(endpoint).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        self.conns.push(Conn {
            handle,
            target,
            dest,
            phase: Phase::Waiting {
                since: StdInstant::now(),
                first: Vec::new(),
            },
            up: 0,
            down: 0,
        });
    }

    fn serve_dns(&mut self) {
        let mut buf = [0u8; 1500];
        loop {
            let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
            let Ok((n, meta)) = socket.recv_slice(&mut buf) else {
                break;
            };
            let Some(reply) = crate::dns::answer(&buf[..n], &self.cfg.policy, &mut self.pool)
            else {
                continue;
            };
            let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
            let _ = socket.send_slice(&reply.packet, meta.endpoint);
            (self.log)(&reply.event);
        }
    }

    /// Moves data for every connection; returns whether anything happened.
    fn pump(&mut self) -> bool {
        let mut busy = false;
        let mut events = Vec::new();
        for i in 0..self.conns.len() {
            let handle = self.conns[i].handle;
            let dest = self.conns[i].dest;
            let target = self.conns[i].target.clone();
            let mut phase = std::mem::replace(&mut self.conns[i].phase, Phase::Done);
            let mut up = 0u64;
            let mut down = 0u64;
            {
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                phase = match phase {
                    Phase::Waiting { since, mut first } => {
                        if socket.state() == tcp::State::Closed
                            || socket.state() == tcp::State::TimeWait
                        {
                            Phase::Done
                        } else if socket.state() == tcp::State::Listen
                            || socket.state() == tcp::State::SynReceived
                        {
                            if since.elapsed() > Duration::from_secs(30) {
                                socket.abort();
                                Phase::Done
                            } else {
                                Phase::Waiting { since, first }
                            }
                        } else {
                            let mut buf = [0u8; 4096];
                            while socket.can_recv() && first.len() < 16 * 1024 {
                                match socket.recv_slice(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => first.extend_from_slice(&buf[..n]),
                                }
                            }
                            let c = claim(&first);
                            let waited = since.elapsed() > FIRST_BYTES_WAIT;
                            let name = target.name();
                            match (c, name) {
                                (Claim::Incomplete, _) if !waited && socket.may_recv() => {
                                    Phase::Waiting { since, first }
                                }
                                (Claim::Host(claimed), Some(name)) if claimed != name => {
                                    events.push(now_event(
                                        EventKind::Tcp,
                                        Some(name),
                                        format!("{dest}"),
                                        Verdict::Deny,
                                        &format!("TLS SNI / HTTP Host names {claimed}"),
                                    ));
                                    socket.abort();
                                    Phase::Done
                                }
                                (Claim::Unnamed, Some(name)) => {
                                    events.push(now_event(
                                        EventKind::Tcp,
                                        Some(name),
                                        format!("{dest}"),
                                        Verdict::Deny,
                                        "TLS or HTTP without a single host name",
                                    ));
                                    socket.abort();
                                    Phase::Done
                                }
                                _ => {
                                    busy = true;
                                    Phase::Connecting {
                                        first,
                                        result: self_connect(&self.cfg, &target, dest.port()),
                                    }
                                }
                            }
                        }
                    }
                    Phase::Connecting { first, result } => match result.try_recv() {
                        Ok(Ok(host)) => {
                            let _ = host.set_nonblocking(true);
                            let _ = host.set_nodelay(true);
                            busy = true;
                            up += first.len() as u64;
                            Phase::Relaying {
                                host,
                                to_host: first,
                                host_eof: false,
                            }
                        }
                        Ok(Err(e)) => {
                            events.push(now_event(
                                EventKind::Tcp,
                                match &target {
                                    Target::Name(n) => Some(n.clone()),
                                    _ => None,
                                },
                                format!("{dest}"),
                                Verdict::Deny,
                                &format!("upstream connection failed: {e}"),
                            ));
                            socket.abort();
                            Phase::Done
                        }
                        Err(TryRecvError::Empty) => Phase::Connecting { first, result },
                        Err(TryRecvError::Disconnected) => {
                            socket.abort();
                            Phase::Done
                        }
                    },
                    Phase::Relaying {
                        mut host,
                        mut to_host,
                        mut host_eof,
                    } => {
                        // Guest -> host.
                        let mut buf = [0u8; 16 * 1024];
                        while to_host.len() < BUF && socket.can_recv() {
                            match socket.recv_slice(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    up += n as u64;
                                    to_host.extend_from_slice(&buf[..n]);
                                }
                            }
                        }
                        while !to_host.is_empty() {
                            match host.write(&to_host) {
                                Ok(0) => break,
                                Ok(n) => {
                                    to_host.drain(..n);
                                    busy = true;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    host_eof = true;
                                    to_host.clear();
                                }
                            }
                        }
                        let opened = !matches!(
                            socket.state(),
                            tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen
                        );
                        if opened && !socket.may_recv() && to_host.is_empty() {
                            let _ = host.shutdown(std::net::Shutdown::Write);
                        }
                        // Host -> guest.
                        while !host_eof && socket.can_send() {
                            let room = socket.send_capacity() - socket.send_queue();
                            let mut chunk = vec![0u8; room.min(buf.len())];
                            match host.read(&mut chunk) {
                                Ok(0) => host_eof = true,
                                Ok(n) => {
                                    down += n as u64;
                                    let _ = socket.send_slice(&chunk[..n]);
                                    busy = true;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => host_eof = true,
                            }
                        }
                        if host_eof
                            && socket.send_queue() == 0
                            && socket.state() != tcp::State::Closed
                        {
                            socket.close();
                        }
                        let finished =
                            matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait)
                                || (host_eof && !socket.may_recv() && !socket.may_send());
                        if finished {
                            Phase::Done
                        } else {
                            Phase::Relaying {
                                host,
                                to_host,
                                host_eof,
                            }
                        }
                    }
                    Phase::Done => Phase::Done,
                };
            }
            self.conns[i].up += up;
            self.conns[i].down += down;
            self.conns[i].phase = phase;
        }
        for e in events {
            (self.log)(&e);
        }
        let sockets = &mut self.sockets;
        let log = &mut self.log;
        self.conns.retain(|c| {
            if matches!(c.phase, Phase::Done) {
                if c.up + c.down > 0 {
                    let mut e = now_event(
                        EventKind::Tcp,
                        match &c.target {
                            Target::Name(n) => Some(n.clone()),
                            _ => None,
                        },
                        format!("{}", c.dest),
                        Verdict::Allow,
                        "closed",
                    );
                    e.bytes_up = c.up;
                    e.bytes_down = c.down;
                    log(&e);
                }
                sockets.remove(c.handle);
                false
            } else {
                true
            }
        });
        busy
    }

    /// Runs the engine on `stream` (QEMU's `-netdev stream`) until it closes.
    pub fn run(mut self, mut stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let mut inbuf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let mut activity = false;
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        inbuf.extend_from_slice(&chunk[..n]);
                        activity = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            while inbuf.len() >= 4 {
                let len = u32::from_be_bytes([inbuf[0], inbuf[1], inbuf[2], inbuf[3]]) as usize;
                if inbuf.len() < 4 + len {
                    break;
                }
                let frame: Vec<u8> = inbuf[4..4 + len].to_vec();
                inbuf.drain(..4 + len);
                self.inspect(&frame);
                self.device.rx.push_back(frame);
            }
            activity |= self.accept_forwards();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.serve_dns();
            activity |= self.pump();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            for frame in self.device.tx.drain(..) {
                let mut out = (frame.len() as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&frame);
                write_all_blocking(&mut stream, &out)?;
                activity = true;
            }
            if !activity {
                self.wait_for_work(&stream);
            }
        }
    }
}

impl Engine {
    /// Sleeps until a frame arrives, a host socket or forward is ready, or a
    /// stack timer is due; short while connections are being set up.
    fn wait_for_work(&mut self, stream: &UnixStream) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let settling = self
            .conns
            .iter()
            .any(|c| matches!(c.phase, Phase::Waiting { .. } | Phase::Connecting { .. }));
        let mut timeout = if settling {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        let now = self.now();
        if let Some(d) = self.iface.poll_delay(now, &self.sockets) {
            timeout = timeout.min(Duration::from_micros(d.total_micros()));
        }
        let mut fds = vec![PollFd::new(stream, PollFlags::IN)];
        for (l, _) in &self.forwards {
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        for c in &self.conns {
            if let Phase::Relaying {
                host,
                to_host,
                host_eof,
            } = &c.phase
            {
                let mut flags = PollFlags::empty();
                // Read from the host only when the guest side has room.
                if !host_eof && self.sockets.get::<tcp::Socket>(c.handle).can_send() {
                    flags |= PollFlags::IN;
                }
                if !to_host.is_empty() {
                    flags |= PollFlags::OUT;
                }
                if !flags.is_empty() {
                    fds.push(PollFd::new(host, flags));
                }
            }
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let _ = poll(&mut fds, Some(&ts));
    }
}

fn self_connect(cfg: &EngineConfig, target: &Target, port: u16) -> Receiver<io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel();
    let hosts = cfg.hosts.clone();
    let policy = cfg.policy.clone();
    let target = target.clone();
    std::thread::spawn(move || {
        let result = (|| {
            let addrs: Vec<SocketAddr> = match &target {
                Target::Addr(a) => vec![SocketAddr::new(IpAddr::V4(*a), port)],
                Target::Forward => Vec::new(),
                Target::Name(name) => match hosts.get(name) {
                    // The user's explicit choice: honoured even for loopback.
                    Some(ip) => vec![SocketAddr::new(*ip, port)],
                    None => (name.as_str(), port)
                        .to_socket_addrs()?
                        .filter(|a| a.is_ipv4() && policy.accept_upstream_answer(a.ip()))
                        .collect(),
                },
            };
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                "no acceptable address (rebinding protection)",
            );
            for a in addrs {
                match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })();
        let _ = tx.send(result);
    });
    rx
}

fn write_all_blocking(stream: &mut UnixStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "QEMU closed the network stream",
                ))
            }
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
