//! Automatic port forwards (`[network] auto_expose`, on by default): a shell
//! loop in the box reports its listening TCP ports every second; each port
//! that listens on every address (or the box's own) gets a listener on the
//! host's 127.0.0.1 — the same port when it is free and not privileged, else
//! a free one — handed to the network engine, which forwards it like
//! `[network] expose`. Attached clients see the list change in the status.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vibebox_core::ports::{self, Scope, Watch, MAX_AUTO_FORWARDS};
use vibebox_net::engine::DynamicForwards;

use crate::guest::GuestShell;
use crate::protocol::Forward;
use crate::server::Server;

/// What the watcher needs.
pub struct PortWatch {
    /// The box's shell.
    pub guest: GuestShell,
    /// The control server (its status carries the list).
    pub server: Server,
    /// The engine's dynamic forwards.
    pub forwards: DynamicForwards,
    /// `[network] expose`: (host port, guest port).
    pub fixed: Vec<(u16, u16)>,
    /// Whether ports are forwarded automatically.
    pub auto: bool,
    /// Set when the session stops.
    pub stop: Arc<AtomicBool>,
    /// Where to log.
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// The longest line read from the box.
const MAX_LINE: u64 = 512;

impl PortWatch {
    /// Publishes the fixed forwards and, with `auto`, starts watching.
    pub fn start(self) {
        self.publish(&BTreeMap::new(), &BTreeMap::new(), &BTreeMap::new());
        if !self.auto {
            return;
        }
        std::thread::spawn(move || self.run());
    }

    fn run(self) {
        let mut current: BTreeMap<u16, (TcpListener, u16)> = BTreeMap::new();
        let mut names: BTreeMap<u16, String> = BTreeMap::new();
        let mut loopback_only: BTreeMap<u16, Scope> = BTreeMap::new();
        let mut published: BTreeMap<u16, u16> = BTreeMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            let line = format!(
                "exec sh -c {}",
                vibebox_core::text::shell_quote(ports::WATCH_LOOP)
            );
            let child = self.guest.command(&line).stdout(Stdio::piped()).spawn();
            let Ok(mut child) = child else {
                std::thread::sleep(Duration::from_secs(2));
                continue;
            };
            let Some(out) = child.stdout.take() else {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            };
            let mut reader = BufReader::new(out);
            let mut watch = Watch::default();
            let mut buf = String::new();
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                buf.clear();
                match (&mut reader).take(MAX_LINE).read_line(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let Some(report) = watch.line(buf.trim_end(), vibebox_net::engine::GUEST) else {
                    continue;
                };
                let loopback: BTreeMap<u16, Scope> = report
                    .iter()
                    .filter(|(p, s)| **s == Scope::Loopback && !vibebox_own(**p))
                    .map(|(p, s)| (*p, *s))
                    .collect();
                let added = self.reconcile(&report, &mut current);
                let new_loopback = loopback.keys().any(|p| !loopback_only.contains_key(p));
                if !added.is_empty() || new_loopback {
                    names = self.process_names();
                }
                for g in &added {
                    let h = current.get(g).map(|(_, h)| *h).unwrap_or_default();
                    let who = names.get(g).map(|n| format!(" ({n})")).unwrap_or_default();
                    (self.log)(&format!("forwarding guest port {g}{who} to 127.0.0.1:{h}"));
                }
                let hosts: BTreeMap<u16, u16> =
                    current.iter().map(|(g, (_, h))| (*g, *h)).collect();
                if hosts != published || loopback != loopback_only {
                    published = hosts;
                    loopback_only = loopback;
                    self.publish(&published, &loopback_only, &names);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            if !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        self.forwards.set(Vec::new());
    }

    /// Brings the forwards in line with `report`; returns the guest ports
    /// newly forwarded.
    fn reconcile(
        &self,
        report: &BTreeMap<u16, Scope>,
        current: &mut BTreeMap<u16, (TcpListener, u16)>,
    ) -> Vec<u16> {
        let wanted: Vec<u16> = report
            .iter()
            .filter(|(p, s)| {
                **s == Scope::Any && !vibebox_own(**p) && !self.fixed.iter().any(|(_, g)| g == *p)
            })
            .map(|(p, _)| *p)
            .collect();
        let before = current.len();
        current.retain(|g, (_, h)| {
            let keep = wanted.contains(g);
            if !keep {
                (self.log)(&format!(
                    "guest port {g} closed: 127.0.0.1:{h} is no longer forwarded"
                ));
            }
            keep
        });
        let mut changed = current.len() != before;
        let mut added = Vec::new();
        for g in wanted {
            if current.contains_key(&g) || current.len() >= MAX_AUTO_FORWARDS {
                continue;
            }
            let Some(listener) = bind_for(g) else {
                continue;
            };
            let Ok(h) = listener.local_addr().map(|a| a.port()) else {
                continue;
            };
            current.insert(g, (listener, h));
            added.push(g);
            changed = true;
        }
        if changed {
            self.forwards.set(
                current
                    .iter()
                    .filter_map(|(g, (l, _))| l.try_clone().ok().map(|l| (l, *g)))
                    .collect(),
            );
        }
        added
    }

    /// The names of the processes listening in the box (ss sees its own
    /// user's processes, and with sudo everyone's where the box allows it).
    fn process_names(&self) -> BTreeMap<u16, String> {
        let out = self
            .guest
            .run(
                "{ ss -Hltnp; sudo -n ss -Hltnp; } 2>/dev/null",
                Duration::from_secs(20),
            )
            .map(|(_, o)| o)
            .unwrap_or_default();
        ports::parse_processes(&out)
    }

    /// Puts the fixed and the automatic forwards, and the ports that listen
    /// only on the box's loopback, in the status.
    fn publish(
        &self,
        auto: &BTreeMap<u16, u16>,
        loopback: &BTreeMap<u16, Scope>,
        names: &BTreeMap<u16, String>,
    ) {
        let forward = |guest: u16, host: Option<u16>, source: &str, note: Option<&str>| Forward {
            guest,
            host,
            source: source.into(),
            process: names.get(&guest).cloned(),
            note: note.map(Into::into),
        };
        let mut list: Vec<Forward> = self
            .fixed
            .iter()
            .map(|(h, g)| forward(*g, Some(*h), "config", None))
            .collect();
        list.extend(
            auto.iter()
                .map(|(g, h)| forward(*g, Some(*h), "auto", None)),
        );
        // Bounded too: the status is one line of at most 64 KiB.
        list.extend(loopback.keys().take(MAX_AUTO_FORWARDS).map(|g| {
            forward(
                *g,
                None,
                "auto",
                Some("listens on 127.0.0.1 in the box only: listen on 0.0.0.0 to forward it"),
            )
        }));
        self.server.update(|s| s.status.ports = list);
    }
}

/// A listener on the host's loopback for guest port `guest`: the same port
/// when it is not privileged and free, else any free port.
fn bind_for(guest: u16) -> Option<TcpListener> {
    if guest >= 1024 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", guest)) {
            return Some(l);
        }
    }
    TcpListener::bind(("127.0.0.1", 0)).ok()
}

/// The box's ports vibebox itself serves (sshd, the exec agent): never
/// forwarded as the box's own.
fn vibebox_own(port: u16) -> bool {
    port == 22 || port == vibebox_agent::proto::PORT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileged_or_taken_ports_get_another() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let other = bind_for(port).unwrap();
        assert_ne!(other.local_addr().unwrap().port(), port);
        let low = bind_for(80).unwrap();
        assert!(low.local_addr().unwrap().port() >= 1024);
        assert!(low.local_addr().unwrap().ip().is_loopback());
    }
}
