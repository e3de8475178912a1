//! The `Runtime` trait: what turns a [`SessionPlan`] into a running machine.
//!
//! A runtime says whether it can run here (and why not), and starts a machine
//! from a plan, with its NIC on the network engine's endpoint. The machine it
//! returns can be watched (did it end by itself?) and shut down. The
//! supervisor owns everything around it: the control socket, the lease, the
//! network engine, the shared SSH connection. `vibebox-vm` implements it for
//! QEMU, `vibebox-container` for crun.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::plan::SessionPlan;

/// Whether a runtime can run sessions here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Availability {
    /// It can.
    pub available: bool,
    /// Why (or why not), in one sentence for `explain`.
    pub reason: String,
}

/// Where the machine's one NIC goes, and how the guest is addressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkEndpoint {
    /// The engine's unix socket (Ethernet frames, length-prefixed).
    pub socket: PathBuf,
    /// The engine's unix socket for a frame device: a runtime that makes
    /// its machine's NIC itself (a TAP, or a packet socket on a veth pair)
    /// sends its fd there (`SCM_RIGHTS`), and the engine drives it.
    pub frames_socket: PathBuf,
    /// The guest NIC's MAC address (`52:54:…`).
    pub guest_mac: String,
    /// The guest's address.
    pub guest_address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway, which is also the DNS server (the engine).
    pub gateway: Ipv4Addr,
}

/// Everything a runtime gets to start one machine.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    /// The plan the client checked.
    pub plan: &'a SessionPlan,
    /// Its config, parsed from the plan's text.
    pub config: &'a Config,
    /// `VIBEBOX_HOME` (images, caches).
    pub vibebox_home: &'a Path,
    /// The host user's home (tool caches).
    pub host_home: &'a Path,
    /// A private directory for the machine's sockets (created, 0700).
    pub run_dir: &'a Path,
    /// The network engine's endpoint.
    pub network: &'a NetworkEndpoint,
}

/// A machine could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// What a runtime reports while it starts a machine.
pub trait StartEvents {
    /// A step a person waiting should see ("booting the guest").
    fn progress(&mut self, step: &str);
    /// A line for the supervisor's log.
    fn log(&mut self, line: &str);
}

/// A running machine.
pub trait Machine: Send {
    /// `Some(how)` once the machine has ended by itself.
    fn exited(&mut self) -> Option<String>;
    /// Shuts the machine down cleanly (and forcibly after a while), and
    /// everything it started. A suspended state, if any, is discarded.
    fn shutdown(self: Box<Self>, events: &mut dyn StartEvents);
    /// Waits until the guest has done what it does after reporting ready
    /// (mounting its shares, or moving them after a resume): no client may
    /// run a command before. Done once; later calls return at once.
    fn settle(&mut self) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Whether [`Machine::settle`] has nothing to wait for (the guest's
    /// start was over when it said ready): the session is announced as
    /// running before anything else is started beside it.
    fn settles_at_once(&self) -> bool {
        false
    }
    /// The shared SSH connection is about to open: a machine whose SSH
    /// server starts on demand starts it now (the connection is retried
    /// until it answers).
    fn ssh_wanted(&mut self) {}
    /// The project directory was deleted while the machine runs: nothing at
    /// its old path may be touched any more (another project may be there
    /// now), even when the machine stops.
    fn project_deleted(&mut self) {}
    /// The project directory moved to `dir` while the machine runs: what the
    /// machine writes later (a suspended state) goes there.
    fn moved(&mut self, _dir: &std::path::Path) {}
    /// Saves the machine (memory, devices, processes) so that the next start
    /// resumes it, and stops it. On failure the machine is powered off
    /// instead, and the error says why.
    fn suspend(self: Box<Self>, events: &mut dyn StartEvents) -> Result<(), RuntimeError> {
        self.shutdown(events);
        Err(RuntimeError(
            "this runtime cannot suspend; the box was powered off".into(),
        ))
    }
    /// Copies the machine's disk to `dest` while it runs, whole: the guest is
    /// paused (its writes flushed) for the copy and goes on after
    /// (`vibebox fork`). With `memory` (a new, private directory), its
    /// memory and devices of the same pause go there too (`ram`,
    /// `dev.state`, `record.json`), for a fork that resumes where it was.
    fn copy_disk(
        &mut self,
        _dest: &std::path::Path,
        _memory: Option<&std::path::Path>,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError(
            "the container runtime cannot fork a box yet".into(),
        ))
    }
}

/// Turns session plans into running machines.
pub trait Runtime {
    /// `vm` or `container`.
    fn name(&self) -> &'static str;
    /// Whether it can run here, and why.
    fn availability(&self) -> Availability;
    /// Starts the machine of `request` and returns once the guest is ready
    /// (its sshd listens and its host key is pinned).
    fn start(
        &self,
        request: &StartRequest<'_>,
        events: &mut dyn StartEvents,
    ) -> Result<Box<dyn Machine>, RuntimeError>;
}
