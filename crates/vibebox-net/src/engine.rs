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
//!
//! Fail closed: guest bytes to a name leave the host only once
//! [`crate::sniff::Inspector`] classified them (a complete ClientHello or
//! request head naming that name, SSH, git, or a server-first protocol).
//! Bounded: at most [`EngineConfig::max_connections`] connections (beyond it,
//! a reset and a summarised log line), fixed buffers per connection, no
//! thread per connection (names resolve on a small fixed pool, connects are
//! non-blocking and polled), and a rate-limited log.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, TryRecvError};
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

use crate::link::FrameLink;
use crate::log::{EventKind, NetworkEvent, RateLimitedLog};
use crate::sniff::{Decision, Inspector, SERVER_FIRST_WAIT};
use crate::synthetic::SyntheticPool;
use crate::upstream::{Dialer, Resolved, Resolver};

/// The engine's own address on the guest's network (gateway and DNS).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);
/// The guest's address.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 15);
/// The prefix length of the guest's network.
pub const PREFIX: u8 = 24;
/// The engine's MAC address.
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x76, 0x62, 0x02];

/// Each direction of a connection buffers at most this much in the engine's
/// stack, and as much again on its way to the host socket.
pub const BUF: usize = 256 * 1024;
/// The default cap on a session's concurrent connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Guest bytes an inspector may hold while it waits (for a server's first
/// bytes or answer to an Upgrade); past it, the guest is not read (TCP
/// backpressure).
const HOLD_MAX: usize = 256 * 1024;

/// What the engine needs to know.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The policy.
    pub policy: Policy,
    /// Resolver overrides (`[network] hosts`): the user's explicit choice,
    /// honoured even for loopback.
    pub hosts: HashMap<String, IpAddr>,
    /// The most connections (guest's and forwarded) open at once.
    pub max_connections: usize,
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
    /// Waiting for the handshake and the guest's first classified bytes.
    Waiting {
        since: StdInstant,
        established: Option<StdInstant>,
    },
    /// The name is being resolved on the host.
    Resolving { result: Receiver<Resolved> },
    /// The host connection is being opened.
    Connecting { dialer: Dialer },
    /// Relaying both ways.
    Relaying { host: TcpStream, host_eof: bool },
    /// Finished: remove.
    Done,
}

struct Conn {
    handle: SocketHandle,
    target: Target,
    dest: SocketAddr,
    phase: Phase,
    /// Checks guest bytes to a name (none for raw addresses and forwards).
    inspector: Option<Inspector>,
    /// Classified guest bytes on their way to the host socket.
    to_host: Vec<u8>,
    /// Done, and the stack has had one poll to send its reset or FIN.
    reaped: bool,
    /// The guest address whose SYN this socket was made for.
    syn_from: Option<SocketAddr>,
    up: u64,
    down: u64,
}

/// Forwards that change while the engine runs (ports the box starts
/// listening on): the supervisor sets the list, every engine of the session
/// picks it up at its next turn. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DynamicForwards(std::sync::Arc<std::sync::Mutex<(u64, ForwardList)>>);

/// Host listeners, each with the guest port it forwards to.
type ForwardList = Vec<(std::net::TcpListener, u16)>;

impl DynamicForwards {
    /// Replaces the list: each host listener (on the host's loopback) with the
    /// guest port it forwards to. A listener left out is closed once no
    /// engine holds it (connections already made go on).
    pub fn set(&self, forwards: Vec<(std::net::TcpListener, u16)>) {
        for (l, _) in &forwards {
            let _ = l.set_nonblocking(true);
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        g.1 = forwards;
    }

    /// The list's version, and copies of its listeners when it is not `seen`.
    fn changed(&self, seen: u64) -> Option<(u64, ForwardList)> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == seen {
            return None;
        }
        let copies =
            g.1.iter()
                .filter_map(|(l, p)| l.try_clone().ok().map(|l| (l, *p)))
                .collect();
        Some((g.0, copies))
    }
}

/// The policy of a running session, which `vibebox reload` changes: every
/// engine of the session takes it up at its next turn and closes the
/// connections it no longer allows. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LivePolicy(std::sync::Arc<std::sync::Mutex<(u64, Option<PolicyUpdate>)>>);

/// A new policy and resolver overrides.
#[derive(Debug, Clone)]
pub struct PolicyUpdate {
    /// The policy.
    pub policy: Policy,
    /// Resolver overrides (`[network] hosts`).
    pub hosts: HashMap<String, IpAddr>,
}

impl LivePolicy {
    /// Replaces the policy.
    pub fn set(&self, update: PolicyUpdate) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        g.1 = Some(update);
    }

    fn changed(&self, seen: u64) -> Option<(u64, PolicyUpdate)> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &g.1 {
            Some(u) if g.0 != seen => Some((g.0, u.clone())),
            _ => None,
        }
    }
}

/// A DNS query held while the person decides (ask mode).
struct Held {
    name: String,
    query: Vec<u8>,
    from: udp::UdpMetadata,
}

/// Lookups held at once (retries of a name included); more are refused.
const MAX_HELD: usize = 64;

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
    /// How many of `forwards` are the fixed ones (the rest are dynamic).
    fixed_forwards: usize,
    dynamic: Option<(DynamicForwards, u64)>,
    live: Option<(LivePolicy, u64)>,
    /// Ask mode's questions (none: nobody can ever be asked).
    asks: Option<crate::ask::Asks>,
    /// Lookups waiting for the person (ask mode).
    held: Vec<Held>,
    next_local_port: u16,
    log: RateLimitedLog,
    resolver: Resolver,
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

/// May the guest connect to `name` on `port`: the policy, and in ask mode
/// what the person allowed.
fn decide_name(policy: &Policy, asks: Option<&crate::ask::Asks>, name: &str, port: u16) -> Verdict {
    let v = policy.decide_name(name, Some(port));
    let asked = || {
        policy.mode == vibebox_core::policy::NetworkMode::Ask
            && asks.is_some_and(|a| a.allowed(name))
    };
    if v == Verdict::Deny && asked() {
        Verdict::Allow
    } else {
        v
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
        let resolver = Resolver::new(cfg.hosts.clone(), cfg.policy.clone());
        Engine {
            cfg,
            resolver,
            pool: SyntheticPool::default(),
            iface,
            device,
            sockets,
            dns,
            conns: Vec::new(),
            forwards: Vec::new(),
            fixed_forwards: 0,
            dynamic: None,
            live: None,
            asks: None,
            held: Vec::new(),
            next_local_port: first_local_port(),
            log: RateLimitedLog::new(log),
            epoch,
        }
    }

    /// Forwards connections accepted on each listener (on the host's loopback)
    /// to the paired guest port, through the same engine.
    pub fn with_forwards(mut self, forwards: Vec<(std::net::TcpListener, u16)>) -> Engine {
        for (l, _) in &forwards {
            let _ = l.set_nonblocking(true);
        }
        self.fixed_forwards = forwards.len();
        self.forwards = forwards;
        self
    }

    /// Also forwards what `dynamic` lists, as it changes.
    pub fn with_dynamic_forwards(mut self, dynamic: DynamicForwards) -> Engine {
        self.dynamic = Some((dynamic, u64::MAX));
        self
    }

    /// Follows `live` (`vibebox reload`): the policy of the session now.
    pub fn with_live_policy(mut self, live: LivePolicy) -> Engine {
        // A policy set before this engine started is this engine's already.
        let seen = live.0.lock().unwrap_or_else(|e| e.into_inner()).0;
        self.live = Some((live, seen));
        self
    }

    /// In ask mode, holds lookups of unlisted names while `asks` puts the
    /// question to the person.
    pub fn with_asks(mut self, asks: crate::ask::Asks) -> Engine {
        self.asks = Some(asks);
        self
    }

    /// Takes up a changed policy: new connections and lookups follow it, and
    /// the open connections it refuses are closed (with a reset).
    fn refresh_policy(&mut self) {
        let Some((live, seen)) = &mut self.live else {
            return;
        };
        let Some((version, update)) = live.changed(*seen) else {
            return;
        };
        *seen = version;
        self.resolver = Resolver::new(update.hosts.clone(), update.policy.clone());
        self.cfg.policy = update.policy;
        self.cfg.hosts = update.hosts;
        for conn in &mut self.conns {
            if conn.reaped || matches!(conn.phase, Phase::Done) {
                continue;
            }
            let verdict = match &conn.target {
                Target::Name(n) => {
                    decide_name(&self.cfg.policy, self.asks.as_ref(), n, conn.dest.port())
                }
                Target::Addr(ip) => self.cfg.policy.decide_ip(IpAddr::V4(*ip), conn.dest.port()),
                Target::Forward => Verdict::Allow,
            };
            if verdict == Verdict::Allow {
                continue;
            }
            self.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
            conn.phase = Phase::Done;
            self.log.log(&now_event(
                EventKind::Tcp,
                conn.target.name(),
                format!("{}", conn.dest),
                Verdict::Deny,
                "closed: the reloaded policy refuses it",
            ));
        }
    }

    /// Takes up a changed dynamic list.
    fn refresh_forwards(&mut self) {
        let Some((dynamic, seen)) = &mut self.dynamic else {
            return;
        };
        if let Some((version, copies)) = dynamic.changed(*seen) {
            *seen = version;
            self.forwards.truncate(self.fixed_forwards);
            self.forwards.extend(copies);
        }
    }

    /// Accepts pending host connections of the forwards; returns whether any came.
    fn accept_forwards(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.forwards.len() {
            while let Ok((host, from)) = self.forwards[i].0.accept() {
                any = true;
                if self.conns.len() >= self.cfg.max_connections {
                    // Dropping `host` closes it: the host's client sees a reset.
                    self.log.log(&now_event(
                        EventKind::Tcp,
                        None,
                        format!("{from} -> guest:{}", self.forwards[i].1),
                        Verdict::Deny,
                        "too many connections",
                    ));
                    continue;
                }
                let guest_port = self.forwards[i].1;
                let _ = host.set_nonblocking(true);
                let _ = host.set_nodelay(true);
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; BUF]),
                    tcp::SocketBuffer::new(vec![0; BUF]),
                );
                self.next_local_port = next_local_port(self.next_local_port);
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
                self.log.log(&now_event(
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
                        host_eof: false,
                    },
                    inspector: None,
                    to_host: Vec::new(),
                    reaped: false,
                    syn_from: None,
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
                    let v = decide_name(&self.cfg.policy, self.asks.as_ref(), &name, port);
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
        self.log.log(&now_event(
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
                self.log.log(&now_event(
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
            self.log.log(&now_event(
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
        // One listening socket per SYN source: several connections to one
        // destination in the same batch of frames each get their own (a
        // listening socket takes one connection). A retransmitted SYN finds
        // the socket made for it.
        let known = self.conns.iter().any(|c| {
            c.dest == dest
                && (c.syn_from == Some(src)
                    || self
                        .sockets
                        .get::<tcp::Socket>(c.handle)
                        .remote_endpoint()
                        .map(|e| e.port)
                        == Some(src.port()))
        });
        if known {
            return;
        }
        if self.conns.len() >= self.cfg.max_connections {
            // No listening socket: the stack resets it.
            self.log.log(&now_event(
                EventKind::Tcp,
                None,
                format!("{dst}:{}", tcp.dst_port()),
                Verdict::Deny,
                "too many connections",
            ));
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
        let inspector = target.name().map(|n| Inspector::new(&n));
        self.conns.push(Conn {
            handle,
            target,
            dest,
            phase: Phase::Waiting {
                since: StdInstant::now(),
                established: None,
            },
            inspector,
            to_host: Vec::new(),
            reaped: false,
            syn_from: Some(src),
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
            let query = &buf[..n];
            if let Some(name) = self.to_ask(query) {
                let consult = match &self.asks {
                    Some(asks) => asks.consult(&name),
                    None => crate::ask::Consult::Deny(
                        "ask mode: nobody is attached at a host terminal to ask",
                    ),
                };
                let (verdict, why) = match consult {
                    crate::ask::Consult::Wait if self.held.len() < MAX_HELD => {
                        self.held.push(Held {
                            name,
                            query: query.to_vec(),
                            from: meta,
                        });
                        continue;
                    }
                    crate::ask::Consult::Wait => {
                        (Verdict::Deny, "ask mode: too many lookups are waiting")
                    }
                    crate::ask::Consult::Allow(why) => (Verdict::Allow, why),
                    crate::ask::Consult::Deny(why) => (Verdict::Deny, why),
                };
                self.reply_dns(query.to_vec(), meta, verdict, why);
                continue;
            }
            let Some(reply) = crate::dns::answer(query, &self.cfg.policy, &mut self.pool) else {
                continue;
            };
            let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
            let _ = socket.send_slice(&reply.packet, meta.endpoint);
            self.log.log(&reply.event);
        }
        self.release_held();
    }

    /// In ask mode, the name of a query to put to the person: a well-formed
    /// name the policy does not list.
    fn to_ask(&self, query: &[u8]) -> Option<String> {
        if self.cfg.policy.mode != vibebox_core::policy::NetworkMode::Ask {
            return None;
        }
        let name = crate::dns::asked_name(query)??;
        (self.cfg.policy.decide_name(&name, None) == Verdict::Deny).then_some(name)
    }

    /// Answers `query` with `verdict` (and why) and logs it.
    fn reply_dns(&mut self, query: Vec<u8>, from: udp::UdpMetadata, verdict: Verdict, why: &str) {
        let Some(reply) = crate::dns::answer_with(&query, &mut self.pool, |_| (verdict, why))
        else {
            return;
        };
        let socket = self.sockets.get_mut::<udp::Socket>(self.dns);
        let _ = socket.send_slice(&reply.packet, from.endpoint);
        self.log.log(&reply.event);
    }

    /// Answers the held lookups the person decided (or whose question was
    /// withdrawn); a reloaded policy that lists the name answers them too.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for h in held {
            let listed = self.cfg.policy.decide_name(&h.name, None) == Verdict::Allow;
            let asking = self.cfg.policy.mode == vibebox_core::policy::NetworkMode::Ask;
            let standing = match (&self.asks, listed, asking) {
                (_, true, _) => {
                    crate::ask::Standing::Decided(true, "listed by the reloaded policy")
                }
                (_, false, false) => {
                    crate::ask::Standing::Decided(false, "not allowed by the reloaded policy")
                }
                (Some(asks), false, true) => asks.standing(&h.name),
                (None, false, true) => {
                    crate::ask::Standing::Decided(false, "ask mode: nobody to ask")
                }
            };
            match standing {
                crate::ask::Standing::Waiting => self.held.push(h),
                crate::ask::Standing::Decided(allowed, why) => {
                    let verdict = if allowed {
                        Verdict::Allow
                    } else {
                        Verdict::Deny
                    };
                    self.reply_dns(h.query, h.from, verdict, why);
                }
            }
        }
    }

    /// Moves data for every connection; returns whether anything happened.
    fn pump(&mut self) -> bool {
        let mut busy = false;
        let mut events = Vec::new();
        for i in 0..self.conns.len() {
            let conn = &mut self.conns[i];
            if conn.reaped {
                continue;
            }
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            let phase = std::mem::replace(&mut conn.phase, Phase::Done);
            let mut refuse = |conn: &mut Conn, socket: &mut tcp::Socket, reason: &str| {
                events.push(now_event(
                    EventKind::Tcp,
                    conn.target.name(),
                    format!("{}", conn.dest),
                    Verdict::Deny,
                    reason,
                ));
                socket.abort();
                Phase::Done
            };
            // Guest -> inspector -> to_host, in every phase once established.
            let opened = !matches!(
                socket.state(),
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed
            );
            if opened && !matches!(phase, Phase::Done) {
                let mut buf = [0u8; 16 * 1024];
                let held =
                    |c: &Conn| c.to_host.len() + c.inspector.as_ref().map_or(0, |i| i.held());
                while held(conn) < HOLD_MAX.min(BUF) && socket.can_recv() {
                    match socket.recv_slice(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            conn.up += n as u64;
                            busy = true;
                            match conn.inspector.as_mut() {
                                Some(insp) => insp.push(&buf[..n]),
                                None => conn.to_host.extend_from_slice(&buf[..n]),
                            }
                        }
                    }
                }
                if let Some(insp) = conn.inspector.as_mut() {
                    match insp.take() {
                        Decision::Forward(bytes) => conn.to_host.extend(bytes),
                        Decision::Refuse(reason) => {
                            let why = format!("refused: {reason}");
                            conn.phase = refuse(conn, socket, &why);
                            continue;
                        }
                    }
                }
            }
            conn.phase = match phase {
                Phase::Waiting { since, established } => {
                    let state = socket.state();
                    if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                        Phase::Done
                    } else if matches!(state, tcp::State::Listen | tcp::State::SynReceived) {
                        if since.elapsed() > Duration::from_secs(30) {
                            socket.abort();
                            Phase::Done
                        } else {
                            Phase::Waiting { since, established }
                        }
                    } else {
                        let established = established.unwrap_or_else(StdInstant::now);
                        let silent = conn.inspector.as_ref().is_some_and(Inspector::untouched)
                            && established.elapsed() > SERVER_FIRST_WAIT;
                        let ready = match &conn.inspector {
                            // Raw addresses allowed by an entry: nothing to check.
                            None => true,
                            Some(_) => !conn.to_host.is_empty() || silent,
                        };
                        if silent {
                            if let Some(insp) = conn.inspector.as_mut() {
                                insp.server_first();
                            }
                        }
                        if !ready && !socket.may_recv() {
                            // The guest closed before saying anything useful.
                            socket.abort();
                            Phase::Done
                        } else if ready {
                            busy = true;
                            match &conn.target {
                                Target::Name(name) => Phase::Resolving {
                                    result: self.resolver.resolve(name, conn.dest.port()),
                                },
                                Target::Addr(a) => Phase::Connecting {
                                    dialer: Dialer::new(vec![SocketAddr::new(
                                        IpAddr::V4(*a),
                                        conn.dest.port(),
                                    )]),
                                },
                                Target::Forward => Phase::Done,
                            }
                        } else {
                            Phase::Waiting {
                                since,
                                established: Some(established),
                            }
                        }
                    }
                }
                Phase::Resolving { result } => match result.try_recv() {
                    Ok(Ok(addrs)) => {
                        busy = true;
                        Phase::Connecting {
                            dialer: Dialer::new(addrs),
                        }
                    }
                    Ok(Err(e)) => refuse(
                        conn,
                        socket,
                        &format!("cannot resolve the name on the host: {e}"),
                    ),
                    Err(TryRecvError::Empty) => Phase::Resolving { result },
                    Err(TryRecvError::Disconnected) => refuse(conn, socket, "the resolver stopped"),
                },
                Phase::Connecting { mut dialer } => match dialer.poll() {
                    Ok(Some(host)) => {
                        let _ = host.set_nodelay(true);
                        busy = true;
                        Phase::Relaying {
                            host,
                            host_eof: false,
                        }
                    }
                    Ok(None) => Phase::Connecting { dialer },
                    Err(e) => refuse(conn, socket, &format!("upstream connection failed: {e}")),
                },
                Phase::Relaying {
                    mut host,
                    mut host_eof,
                } => {
                    while !conn.to_host.is_empty() {
                        match host.write(&conn.to_host) {
                            Ok(0) => break,
                            Ok(n) => {
                                conn.to_host.drain(..n);
                                busy = true;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                host_eof = true;
                                conn.to_host.clear();
                            }
                        }
                    }
                    let held = conn.inspector.as_ref().is_some_and(Inspector::holding);
                    let handshaken = !matches!(
                        socket.state(),
                        tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen
                    );
                    if handshaken && !socket.may_recv() && conn.to_host.is_empty() && !held {
                        let _ = host.shutdown(std::net::Shutdown::Write);
                    }
                    // Host -> guest.
                    let mut buf = [0u8; 16 * 1024];
                    while !host_eof && socket.can_send() {
                        let room = socket.send_capacity() - socket.send_queue();
                        let room = room.min(buf.len());
                        match host.read(&mut buf[..room]) {
                            Ok(0) => host_eof = true,
                            Ok(n) => {
                                conn.down += n as u64;
                                if let Some(insp) = conn.inspector.as_mut() {
                                    insp.server_sent(&buf[..n]);
                                }
                                let _ = socket.send_slice(&buf[..n]);
                                busy = true;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => host_eof = true,
                        }
                    }
                    if host_eof && socket.send_queue() == 0 && socket.state() != tcp::State::Closed
                    {
                        socket.close();
                    }
                    let finished =
                        matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait)
                            || (host_eof && !socket.may_recv() && !socket.may_send());
                    if finished {
                        Phase::Done
                    } else {
                        Phase::Relaying { host, host_eof }
                    }
                }
                Phase::Done => Phase::Done,
            };
        }
        for e in events {
            self.log.log(&e);
        }
        let sockets = &mut self.sockets;
        let log = &mut self.log;
        self.conns.retain_mut(|c| {
            if matches!(c.phase, Phase::Done) {
                // Keep the socket for one more poll of the stack, so that its
                // reset (or FIN) reaches the guest: never a hang.
                if !c.reaped {
                    c.reaped = true;
                    return true;
                }
                if c.up + c.down > 0 {
                    let mut e = now_event(
                        EventKind::Tcp,
                        c.target.name(),
                        format!("{}", c.dest),
                        Verdict::Allow,
                        "closed",
                    );
                    e.bytes_up = c.up;
                    e.bytes_down = c.down;
                    log.log(&e);
                }
                sockets.remove(c.handle);
                false
            } else {
                true
            }
        });
        self.log.tick();
        busy
    }

    /// Runs the engine on `stream` (QEMU's `-netdev stream`) until it closes.
    pub fn run(self, stream: UnixStream) -> io::Result<()> {
        self.run_link(crate::link::StreamLink::new(stream)?)
    }

    /// Runs the engine on any frame link (a TAP, a packet socket on a veth)
    /// until the peer is gone.
    pub fn run_link(mut self, mut link: impl FrameLink) -> io::Result<()> {
        let mut frames = Vec::new();
        loop {
            let mut activity = false;
            if !link.receive(&mut frames)? {
                return Ok(());
            }
            for frame in frames.drain(..) {
                activity = true;
                self.inspect(&frame);
                self.device.rx.push_back(frame);
            }
            self.refresh_forwards();
            self.refresh_policy();
            activity |= self.accept_forwards();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.serve_dns();
            activity |= self.pump();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            for frame in self.device.tx.drain(..) {
                link.send(&frame)?;
                activity = true;
            }
            if !activity {
                self.wait_for_work(link.fd());
            }
        }
    }
}

impl Engine {
    /// Sleeps until a frame arrives, a host socket or forward is ready, or a
    /// stack timer is due; short while connections are being set up.
    fn wait_for_work(&mut self, link: std::os::fd::BorrowedFd<'_>) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let settling = self.conns.iter().any(|c| {
            matches!(c.phase, Phase::Waiting { .. } | Phase::Resolving { .. })
                || c.inspector.as_ref().is_some_and(Inspector::holding)
        });
        let mut timeout = if settling {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(100)
        };
        let now = self.now();
        if let Some(d) = self.iface.poll_delay(now, &self.sockets) {
            timeout = timeout.min(Duration::from_micros(d.total_micros()));
        }
        let mut fds = vec![PollFd::from_borrowed_fd(link, PollFlags::IN)];
        for (l, _) in &self.forwards {
            fds.push(PollFd::new(l, PollFlags::IN));
        }
        for c in &self.conns {
            if let Phase::Connecting { dialer } = &c.phase {
                if let Some(fd) = dialer.fd() {
                    fds.push(PollFd::from_borrowed_fd(fd, PollFlags::OUT));
                }
            }
            if let Phase::Relaying { host, host_eof } = &c.phase {
                let to_host = &c.to_host;
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

/// The source ports the engine connects into the guest from (forwards).
const LOCAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65000;

/// Where a new engine starts in [`LOCAL_PORTS`]: at random. A resumed or
/// forked guest still holds the connections of the engine before it (its
/// memory says they are open); a new engine that started at the same port
/// would send its first SYN into one of them, which the guest answers with
/// an ACK for the old connection, and the connection would open only when
/// the SYN is sent again, a second later.
fn first_local_port() -> u16 {
    let mut b = [0u8; 2];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map(|()| u16::from_ne_bytes(b))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u16)
                .unwrap_or(0)
        });
    let span = LOCAL_PORTS.end() - LOCAL_PORTS.start() + 1;
    LOCAL_PORTS.start() + random % span
}

/// The port after `port` in [`LOCAL_PORTS`], wrapping around.
fn next_local_port(port: u16) -> u16 {
    if port >= *LOCAL_PORTS.end() || port < *LOCAL_PORTS.start() {
        *LOCAL_PORTS.start()
    } else {
        port + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_source_ports_start_at_random_and_stay_in_range() {
        let starts: std::collections::HashSet<u16> = (0..20).map(|_| first_local_port()).collect();
        assert!(starts.len() > 1, "{starts:?}");
        assert!(starts.iter().all(|p| LOCAL_PORTS.contains(p)));
        assert_eq!(next_local_port(49152), 49153);
        assert_eq!(next_local_port(65000), 49152);
        assert_eq!(next_local_port(80), 49152);
    }
}
