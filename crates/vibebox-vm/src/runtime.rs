//! The VM runtime: QEMU (KVM where the probe passes, else TCG) with one
//! virtiofsd per share, behind [`vibebox_core::runtime::Runtime`].
//!
//! A start checks the image and the instance disk, makes the keys, starts a
//! virtiofsd per planned share (with its guards), starts QEMU with its NIC on
//! the network engine's endpoint, hands the guest its configuration over the
//! private control port and waits until the guest reports ready with its SSH
//! host key, which it pins. The running [`VmMachine`] powers the guest off on
//! shutdown and kills what is left.

use std::fs;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vibebox_core::mounts::MountMode;
use vibebox_core::project::Project;
use vibebox_core::runtime::{
    Availability, Machine as RunningMachine, Runtime, RuntimeError, StartEvents, StartRequest,
};

use crate::guest::NotReady;
use crate::kvm::KvmVerdict;
use crate::process::{spawn_tied, wait_for, Tied};
use crate::qemu::{Accel, Machine, Share};
use crate::qmp::Qmp;
use crate::virtiofs::ShareSpec;
use crate::{disk, ssh, virtiofs};
use serde_json::json;

/// How long the guest may take from QEMU start to "ready" (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the guest may take to answer `key` or `identity` (builtins only).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the guest may take to mount (or move) its shares once ready.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
pub use crate::guest::CONTROL_LINE_MAX;
/// The guest console log is rotated at this size (one older file is kept as
/// `console.log.1`): a guest printing forever cannot fill the host's disk.
pub const CONSOLE_LOG_MAX: u64 = 4 << 20;

fn fail(msg: impl Into<String>) -> RuntimeError {
    RuntimeError(msg.into())
}

fn vm(e: crate::VmError) -> RuntimeError {
    RuntimeError(e.to_string())
}

/// The QEMU runtime.
pub struct VmRuntime {
    vibebox_home: std::path::PathBuf,
    probe_exe: std::path::PathBuf,
    verdict: std::sync::OnceLock<KvmVerdict>,
}

impl VmRuntime {
    /// The runtime. KVM usability is measured when first needed, once per
    /// host boot, and cached in `vibebox_home` (`probe_exe` runs the guest
    /// half of the probe).
    pub fn new(vibebox_home: &Path, probe_exe: &Path) -> VmRuntime {
        VmRuntime {
            vibebox_home: vibebox_home.to_path_buf(),
            probe_exe: probe_exe.to_path_buf(),
            verdict: std::sync::OnceLock::new(),
        }
    }

    /// KVM or TCG, and why.
    pub fn verdict(&self) -> &KvmVerdict {
        self.verdict
            .get_or_init(|| cached_verdict(&self.vibebox_home, &self.probe_exe))
    }
}

/// KVM usability, measured once per host boot and cached in
/// `vibebox_home/kvm-probe.json`.
pub fn cached_verdict(vibebox_home: &Path, probe_exe: &Path) -> KvmVerdict {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = vibebox_home.join("kvm-probe.json");
    if let Ok(text) = fs::read_to_string(&cache) {
        if let Ok((id, v)) = serde_json::from_str::<(String, KvmVerdict)>(&text) {
            if id == boot_id.trim() {
                return v;
            }
        }
    }
    let v = crate::kvm::probe(probe_exe, &["__kvm-probe"]);
    if let Ok(text) = serde_json::to_string(&(boot_id.trim(), &v)) {
        let _ = fs::create_dir_all(vibebox_home);
        let _ = fs::write(&cache, text);
    }
    v
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

/// Where `program` is on PATH (the first match).
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|f| f.is_file())
    })
}

impl Runtime for VmRuntime {
    fn name(&self) -> &'static str {
        "vm"
    }

    fn availability(&self) -> Availability {
        if !on_path("qemu-system-x86_64") {
            return Availability {
                available: false,
                reason: "qemu-system-x86_64 is not installed (run scripts/install-deps)".into(),
            };
        }
        Availability {
            available: true,
            reason: format!(
                "QEMU micro-VM under {}: {}",
                if self.verdict().usable {
                    "KVM"
                } else {
                    "TCG emulation"
                },
                self.verdict().reason
            ),
        }
    }

    fn start(
        &self,
        req: &StartRequest<'_>,
        events: &mut dyn StartEvents,
    ) -> Result<Box<dyn RunningMachine>, RuntimeError> {
        let project = req.plan.project();
        let accel = if self.verdict().usable {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        // A new session: no disk yet (a fork or a restored save has one).
        let fresh = !project.disk_path().exists();
        let (keys, base_sha) = prepare_disk_and_keys(req, &project, events)?;
        events.log(&format!(
            "accelerator: {accel:?} ({})",
            self.verdict().reason
        ));
        let empty = req.run_dir.join("empty");
        fs::create_dir_all(&empty)
            .map_err(|e| fail(format!("cannot create {}: {e}", empty.display())))?;
        let saved = SavedState::at(&project, req.vibebox_home)?;
        let fingerprint = Fingerprint::of(req, accel, &base_sha);
        let boot = |resume: bool, events: &mut dyn StartEvents| {
            start_machine(
                req,
                &project,
                accel,
                &keys,
                &saved,
                &fingerprint,
                resume,
                events,
            )
        };
        // Why a saved state is not resumed, told to the log and the client.
        let booting_afresh = |why: &str, events: &mut dyn StartEvents| {
            let why = format!("{why}; booting afresh");
            events.log(&why);
            events.progress(&why);
        };
        // A new session starts from its image's template where it can.
        let mut from_template = false;
        if fresh && matches!(saved.saved(), Saved::Nothing) {
            let guest_paths: Vec<String> =
                req.plan.shares.iter().map(|s| s.guest.clone()).collect();
            let adopted =
                crate::template::get_or_make(req, accel, &base_sha, events).and_then(|t| {
                    t.adopt(&project, &saved, &fingerprint, &guest_paths)
                        .map_err(|e| e.to_string())
                });
            match adopted {
                Ok(()) => from_template = true,
                Err(e) => {
                    saved.discard();
                    renew_disk(req, &project)?;
                    booting_afresh(&format!("no template for new sessions: {e}"), events);
                }
            }
        }
        match saved.saved() {
            Saved::For(old) if old == fingerprint => {
                // Made from a template (now, or by a start that did not
                // finish): its disk holds the template box's host key.
                let template_born = from_template || saved.new_identity();
                events.progress(if template_born {
                    "starting from the image's template"
                } else {
                    "resuming the suspended box"
                });
                match boot(true, events) {
                    Ok(m) => {
                        saved.consumed();
                        return Ok(Box::new(m));
                    }
                    Err(Start::EarlyExit(e)) | Err(Start::Failed(RuntimeError(e))) => {
                        if template_born {
                            booting_afresh(&format!("the template could not be resumed ({e})"), events)
                        } else {
                            booting_afresh(&format!("the suspended state could not be resumed ({e})"), events)
                        }
                    }
                }
            }
            Saved::For(old) => booting_afresh(
                &format!(
                    "the suspended state was saved for another machine ({})",
                    old.difference(&fingerprint)
                ),
                events,
            ),
            Saved::Unknown => booting_afresh(
                "a saved state this host did not write (or that changed since) is in .vibebox/state/; it is never loaded",
                events,
            ),
            Saved::Nothing => {}
        }
        // A disk copied from a template is never booted: it holds the
        // template box's host key, which only the resume replaces.
        if saved.new_identity() {
            renew_disk(req, &project)?;
        }
        saved.discard();
        let m = boot_with_retries(req, &project, accel, &keys, &saved, &fingerprint, events)?;
        Ok(Box::new(m))
    }
}

/// Boots the machine `req` describes (no saved state).
pub(crate) fn boot_with_retries(
    req: &StartRequest<'_>,
    project: &Project,
    accel: Accel,
    keys: &ssh::ClientKeys,
    saved: &SavedState,
    fingerprint: &Fingerprint,
    events: &mut dyn StartEvents,
) -> Result<VmMachine, RuntimeError> {
    let mut attempt = 1;
    loop {
        match start_machine(req, project, accel, keys, saved, fingerprint, false, events) {
            Ok(m) => return Ok(m),
            Err(Start::EarlyExit(msg)) if attempt < 3 => {
                // QEMU occasionally resets in the firmware with a
                // shared-memory backend (see FIELD-NOTES); a fresh start
                // gets past it.
                events.log(&format!("attempt {attempt}: {msg}; starting again"));
                attempt += 1;
            }
            Err(Start::EarlyExit(msg)) => return Err(fail(msg)),
            Err(Start::Failed(e)) => return Err(e),
        }
    }
}

/// A new, empty instance disk in place of one a template gave (which a
/// boot must not use: it holds the template box's host key).
fn renew_disk(req: &StartRequest<'_>, project: &Project) -> Result<(), RuntimeError> {
    let _ = fs::remove_file(project.disk_path());
    disk::ensure_overlay(
        &req.config.image.dir(req.vibebox_home).join("disk.img"),
        &project.disk_path(),
        req.config.disk_gb,
    )
    .map_err(vm)?;
    Ok(())
}

/// Checks the image and the instance disk (made on first use, bound to the
/// exact base it was made on), makes the key pair; returns the public key
/// and the base image's sha256.
fn prepare_disk_and_keys(
    req: &StartRequest<'_>,
    project: &Project,
    events: &mut dyn StartEvents,
) -> Result<(ssh::ClientKeys, String), RuntimeError> {
    let name = &req.config.image;
    let image = name.dir(req.vibebox_home);
    for f in ["disk.img", "vmlinux", "initrd.img", "manifest.toml"] {
        if !image.join(f).is_file() {
            return Err(fail(format!(
                "the base image `{name}` is missing {f}; build it with `vibebox image build --name {name}`"
            )));
        }
    }
    let manifest = vibebox_image::read_manifest(&image).map_err(|e| fail(e.to_string()))?;
    if manifest.guest_version != vibebox_image::guest_version() {
        return Err(fail(format!(
            "the base image `{name}` was built by another version of vibebox; rebuild it with `vibebox image build --name {name}`"
        )));
    }
    let base_sha = manifest.sha256.get("disk.img").cloned().unwrap_or_default();
    let base_record = project.state_dir().join("disk.base");
    if project.disk_path().exists() {
        // The overlay only makes sense over the exact base it was made on.
        let recorded = fs::read_to_string(&base_record).unwrap_or_default();
        if recorded.trim() != base_sha {
            return Err(fail(format!(
                "the instance disk was made over another build of the base image `{name}`; start afresh with `:new` or `vibebox delete` (files in the project directory are kept)"
            )));
        }
    }
    events.progress("preparing keys and the instance disk");
    let keys = ssh::ensure_keypair(&project.ssh_dir()).map_err(vm)?;
    if disk::ensure_overlay(
        &image.join("disk.img"),
        &project.disk_path(),
        req.config.disk_gb,
    )
    .map_err(vm)?
    {
        fs::write(&base_record, &base_sha)
            .map_err(|e| fail(format!("cannot write {}: {e}", base_record.display())))?;
        events.log("created the instance disk");
    }
    disk::check_overlay(&project.disk_path()).map_err(vm)?;
    Ok((keys, base_sha))
}

/// Why one attempt at starting QEMU failed.
enum Start {
    /// QEMU exited before the guest was ready, within its first seconds.
    EarlyExit(String),
    /// Anything else.
    Failed(RuntimeError),
}

impl From<RuntimeError> for Start {
    fn from(e: RuntimeError) -> Start {
        Start::Failed(e)
    }
}

/// The host's TSC frequency in kHz, for the guest's early clock under TCG.
fn tsc_khz() -> Option<u64> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = text
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Writes what QEMU sends on `socket` (the guest console) to `log`, capped at
/// [`CONSOLE_LOG_MAX`] with one rotation. The log is opened without following
/// symlinks.
pub fn start_console_log(socket: &Path, log: &Path) -> Result<(), RuntimeError> {
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", socket.display())))?;
    capped_copy(move || listener.accept().ok().map(|(s, _)| s), log)
}

/// Copies what the machine writes (from the reader `source` gives, in a
/// thread) to `log`, truncated first, rotated at [`CONSOLE_LOG_MAX`] with one
/// older file kept, opened without following a symlink.
pub fn capped_copy<R: std::io::Read + 'static>(
    source: impl FnOnce() -> Option<R> + Send + 'static,
    log: &Path,
) -> Result<(), RuntimeError> {
    let log = log.to_path_buf();
    let open = |path: &Path| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
    };
    let mut file = open(&log).map_err(|e| fail(format!("cannot open {}: {e}", log.display())))?;
    std::thread::spawn(move || {
        let Some(mut stream) = source() else {
            return;
        };
        let mut written = 0u64;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            if written + n as u64 > CONSOLE_LOG_MAX {
                let _ = fs::rename(&log, log.with_extension("log.1"));
                match open(&log) {
                    Ok(f) => file = f,
                    Err(_) => return,
                }
                written = 0;
            }
            if file.write_all(&buf[..n]).is_err() {
                return;
            }
            written += n as u64;
        }
    });
    Ok(())
}

/// The last lines of a log the guest wrote, escaped for the terminal.
fn console_tail(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let text = vibebox_core::text::bytes_for_terminal(&bytes, true);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// A running QEMU machine and its helpers.
pub struct VmMachine {
    qemu: Tied,
    helpers: Vec<Tied>,
    control: UnixStream,
    qmp_socket: std::path::PathBuf,
    saved: SavedState,
    fingerprint: Fingerprint,
    /// The guest's RAM is an unlinked tmpfs file (a booted box), not the
    /// saved file on disk (a resumed one).
    ram_in_memory: bool,
    /// The instance disk (where it is now: the project may move).
    disk: std::path::PathBuf,
    /// What the guest says on its control channel.
    lines: crate::guest::ControlLines,
    /// The guest has not yet said `settled` (its shares are not all there).
    unsettled: bool,
    /// The project directory was deleted: its old path is not ours.
    project_gone: bool,
}

/// What a saved state was made for: a resume needs the same machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    base_sha: String,
    guest_version: String,
    accel: String,
    cpus: u32,
    ram_mb: u32,
    shares: Vec<(std::path::PathBuf, String, MountMode)>,
}

impl Fingerprint {
    pub(crate) fn of(req: &StartRequest<'_>, accel: Accel, base_sha: &str) -> Fingerprint {
        Fingerprint {
            base_sha: base_sha.to_string(),
            guest_version: crate::qemu::machine_version(),
            accel: format!("{accel:?}"),
            cpus: req.config.cpu_count,
            ram_mb: req.config.ram_mb,
            shares: req
                .plan
                .shares
                .iter()
                .map(|s| (s.host.clone(), s.guest.clone(), s.mode))
                .collect(),
        }
    }

    /// What differs from `now`, for a person.
    fn difference(&self, now: &Fingerprint) -> String {
        let mut d = Vec::new();
        if self.base_sha != now.base_sha {
            d.push("the base image changed");
        } else if self.guest_version != now.guest_version {
            d.push("vibebox's guest or its devices changed");
        }
        if self.accel != now.accel {
            d.push("the accelerator changed");
        }
        if self.cpus != now.cpus || self.ram_mb != now.ram_mb {
            d.push("cpu_count or ram_mb changed");
        }
        if self.shares != now.shares {
            d.push("the mounts changed");
        }
        d.join(", ")
    }
}

/// The suspended state of a session: in `.vibebox/state/`, the guest's RAM
/// (`ram`, also its live memory while it runs) and the devices
/// (`dev.state`, a QEMU migration stream); on the host, outside the project,
/// the record that vouches for them (`$VIBEBOX_HOME/suspended/<session>.json`:
/// what they were saved for and the SHA-256 of `dev.state`). QEMU's loader is
/// not a security boundary, so a `dev.state` this host did not write — a
/// repository can ship `.vibebox/` — is never loaded.
#[derive(Debug, Clone)]
pub struct SavedState {
    dir: std::path::PathBuf,
    record: std::path::PathBuf,
}

/// What the host recorded when it suspended a session.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) dev_state_sha256: String,
    /// Mounts to move after the resume (a fork's project: from the parent's
    /// guest path to its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) moves: Vec<(String, String)>,
    /// A new session from its image's template: after the resume the guest
    /// takes its own identity (SSH host key, machine-id, explain text).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) identity: bool,
}

impl Record {
    /// The record of a fork made from this one: the project's mounts are
    /// the fork's directory (`parent` → `child` on the host, and in the
    /// guest from the parent's project path to the fork's, which the resumed
    /// guest then moves its mount to).
    pub(crate) fn for_fork(&self, parent: &Path, child: &Path) -> Record {
        let (old_guest, new_guest) = (
            vibebox_core::mounts::project_guest_path(parent),
            vibebox_core::mounts::project_guest_path(child),
        );
        let mut fingerprint = self.fingerprint.clone();
        for (host, guest, _) in &mut fingerprint.shares {
            if let Ok(rest) = host.strip_prefix(parent) {
                *host = if rest.as_os_str().is_empty() {
                    child.to_path_buf()
                } else {
                    child.join(rest)
                };
            }
            if guest == &old_guest {
                *guest = new_guest.clone();
            } else if let Some(rest) = guest.strip_prefix(&format!("{old_guest}/")) {
                *guest = format!("{new_guest}/{rest}");
            }
        }
        let mut moves = self.moves.clone();
        if old_guest != new_guest {
            moves.push((old_guest, new_guest));
        }
        Record {
            fingerprint,
            dev_state_sha256: self.dev_state_sha256.clone(),
            moves,
            identity: self.identity,
        }
    }
}

/// What is saved for a session, as far as this host vouches for it.
enum Saved {
    /// Nothing to resume.
    Nothing,
    /// Something this host did not save (or that changed since).
    Unknown,
    /// A state this host saved, made for this machine.
    For(Fingerprint),
}

pub(crate) fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl SavedState {
    pub(crate) fn locate(
        project: &Project,
        vibebox_home: &Path,
    ) -> Result<SavedState, RuntimeError> {
        let session = project
            .read_session_id()
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail(format!("{} has no session", project.dir().display())))?;
        Ok(SavedState::of_session(project, vibebox_home, &session))
    }

    fn of_session(project: &Project, vibebox_home: &Path, session: &uuid::Uuid) -> SavedState {
        SavedState {
            dir: project.state_dir().join("state"),
            record: vibebox_home
                .join("suspended")
                .join(format!("{session}.json")),
        }
    }

    /// The state saved in `dir`, vouched for by the record at `record`.
    pub(crate) fn in_dir(dir: std::path::PathBuf, record: std::path::PathBuf) -> SavedState {
        SavedState { dir, record }
    }

    /// The directory of the RAM and the devices.
    pub(crate) fn ram_dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn at(project: &Project, vibebox_home: &Path) -> Result<SavedState, RuntimeError> {
        use std::os::unix::fs::DirBuilderExt;
        let saved = SavedState::locate(project, vibebox_home)?;
        for dir in [&saved.dir, &vibebox_home.join("suspended")] {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(format!("cannot create {}: {e}", dir.display()))),
            }
        }
        Ok(saved)
    }

    pub(crate) fn ram(&self) -> std::path::PathBuf {
        self.dir.join("ram")
    }

    pub(crate) fn dev_state(&self) -> std::path::PathBuf {
        self.dir.join("dev.state")
    }

    /// What is saved, as far as the host's record vouches for it.
    fn saved(&self) -> Saved {
        if fs::symlink_metadata(self.dev_state()).is_err() {
            return Saved::Nothing;
        }
        let record: Option<Record> = fs::read_to_string(&self.record)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        match (record, sha256_of(&self.dev_state())) {
            (Some(r), Ok(sha)) if r.dev_state_sha256 == sha => Saved::For(r.fingerprint),
            _ => Saved::Unknown,
        }
    }

    /// The host's record of a suspended state it vouches for (hash checked).
    pub(crate) fn record_value(&self) -> Option<serde_json::Value> {
        match self.saved() {
            Saved::For(_) => fs::read_to_string(&self.record)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok()),
            _ => None,
        }
    }

    /// Vouches for a state put in place by the host (a fork's memory).
    pub(crate) fn write_record_text(&self, text: &str) -> Result<(), crate::VmError> {
        if let Some(dir) = self.record.parent() {
            let _ = fs::create_dir_all(dir);
        }
        fs::write(&self.record, text).map_err(|e| {
            crate::VmError::Setup(format!("cannot write {}: {e}", self.record.display()))
        })
    }

    /// Vouches for a state put in place by the host (a restored snapshot).
    pub(crate) fn write_record_value(
        &self,
        record: &serde_json::Value,
    ) -> Result<(), crate::VmError> {
        self.write_record_text(&record.to_string())
    }

    fn record(&self) -> Option<Record> {
        fs::read_to_string(&self.record)
            .ok()
            .and_then(|t| serde_json::from_str::<Record>(&t).ok())
    }

    /// The mounts the record says to move after the resume.
    fn moves(&self) -> Vec<(String, String)> {
        self.record().map(|r| r.moves).unwrap_or_default()
    }

    /// Whether the resumed guest takes a new identity (a template's).
    fn new_identity(&self) -> bool {
        self.record().is_some_and(|r| r.identity)
    }

    /// The state was loaded: the RAM file is the running guest's memory again.
    fn consumed(&self) {
        let _ = fs::remove_file(self.dev_state());
        let _ = fs::remove_file(&self.record);
    }

    /// Forgets the host's record of the saved state, and touches nothing in
    /// the project (deleted: its path may hold another project now).
    fn forget(&self) {
        let _ = fs::remove_file(&self.record);
    }

    /// Forgets the saved state, RAM included.
    pub(crate) fn discard(&self) {
        self.consumed();
        let _ = fs::remove_file(self.ram());
    }
}

/// Whether session `session` of `project` is a suspended box this host saved.
pub fn is_suspended(project: &Project, vibebox_home: &Path, session: &uuid::Uuid) -> bool {
    let s = SavedState::of_session(project, vibebox_home, session);
    s.record.is_file() && s.dev_state().is_file()
}

/// Forgets the suspended box of session `session` (the next start boots).
pub fn discard_suspended(project: &Project, vibebox_home: &Path, session: &uuid::Uuid) {
    SavedState::of_session(project, vibebox_home, session).discard();
}

/// A private directory on tmpfs for a booted guest's RAM: `/dev/shm/vibebox-<uid>`,
/// created 0700 and verified to be ours and private; `None` where there is
/// no such tmpfs (the RAM then lives in `.vibebox/state/`).
fn memory_ram_path(session: &str) -> Option<std::path::PathBuf> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let shm = Path::new("/dev/shm");
    let fs_type = rustix::fs::statfs(shm).ok()?.f_type as i64;
    if fs_type != TMPFS_MAGIC || session.is_empty() {
        return None;
    }
    private_dir_in(shm, rustix::process::getuid().as_raw())
        .map(|d| d.join(format!("{session}.ram")))
}

/// `base/vibebox-<uid>`, created 0700, if it is a real directory owned by
/// `uid` that nobody else can enter — `/dev/shm` is writable by every local
/// user, who could have made it first (or made it a symlink).
fn private_dir_in(base: &Path, uid: u32) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = base.join(format!("vibebox-{uid}"));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    let m = fs::symlink_metadata(&dir).ok()?;
    let private =
        m.is_dir() && !m.file_type().is_symlink() && m.uid() == uid && m.mode() & 0o077 == 0;
    private.then_some(dir)
}

/// Copies the guest RAM QEMU `pid` maps (an unlinked tmpfs file, found among
/// its open files) to `to`, sparse.
fn copy_guest_ram(pid: u32, to: &Path) -> Result<(), crate::VmError> {
    let source = open_file_of(pid, |l| {
        let l = l.to_string_lossy();
        l.starts_with("/dev/shm/vibebox-") && l.contains(".ram")
    })
    .ok_or_else(|| crate::VmError::Setup("QEMU's memory file is not open".into()))?;
    let _ = fs::remove_file(to);
    crate::snapshot::copy_sparse(&source, to)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(to, fs::Permissions::from_mode(0o600))
        .map_err(|e| crate::VmError::Setup(format!("cannot protect {}: {e}", to.display())))
}

/// `x-ignore-shared`: the RAM lives in the shared file, the migration stream
/// holds only the devices.
fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

/// Waits until an incoming migration has loaded: `paused` or `running`.
fn wait_loaded(qmp: &mut Qmp) -> Result<String, crate::VmError> {
    let start = Instant::now();
    loop {
        let r = qmp.execute("query-status", json!({}))?;
        let status = r
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("")
            .to_string();
        match status.as_str() {
            "paused" | "running" => return Ok(status),
            "inmigrate" | "prelaunch" | "postmigrate"
                if start.elapsed() < Duration::from_secs(60) =>
            {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => {
                return Err(crate::VmError::Setup(format!(
                    "the saved devices did not load (the machine is {other:?})"
                )))
            }
        }
    }
}

/// A file process `pid` has open whose path satisfies `which`, as its
/// `/proc/<pid>/fd/<n>` link.
fn open_file_of(pid: u32, which: impl Fn(&Path) -> bool) -> Option<std::path::PathBuf> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| fs::read_link(e.path()).is_ok_and(|l| which(&l)))
        .map(|e| e.path())
}

/// Waits (at most `timeout`) until process `pid` has `path` open.
fn wait_until_open(pid: u32, path: &Path, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if open_file_of(pid, |l| l == path).is_some()
            || !Path::new(&format!("/proc/{pid}")).exists()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A random (v4) UUID for vmgenid.
fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl VmMachine {
    /// Has the guest write everything it holds for its disk (`sync`).
    pub(crate) fn sync_disk(&mut self) -> Result<(), RuntimeError> {
        self.control
            .write_all(b"sync\n")
            .map_err(|e| fail(format!("the guest's control port failed: {e}")))?;
        crate::guest::await_word(&mut self.lines, "synced", SETTLE_TIMEOUT)
            .map_err(|e| fail(format!("the guest did not write its disk: {e}")))
    }
}

impl RunningMachine for VmMachine {
    fn exited(&mut self) -> Option<String> {
        match self.qemu.0.try_wait() {
            Ok(Some(status)) => Some(format!("QEMU exited ({status})")),
            _ => None,
        }
    }

    fn shutdown(mut self: Box<Self>, events: &mut dyn StartEvents) {
        events.log("shutting down: asking the guest to power off");
        let _ = self.control.write_all(b"poweroff\n");
        let start = Instant::now();
        let mut exited = false;
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.qemu.0.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            events.log("the guest did not power off within 20 s: killing QEMU");
        }
        // Dropping kills and reaps the helpers, then QEMU (if still there).
        drop(std::mem::take(&mut self.helpers));
        // A powered-off box has nothing to resume. The files in a deleted
        // project went with it; the same path may hold another one now.
        if self.project_gone {
            self.saved.forget();
        } else {
            self.saved.discard();
        }
    }

    fn project_deleted(&mut self) {
        self.project_gone = true;
    }

    fn settle(&mut self) -> Result<(), RuntimeError> {
        if self.unsettled {
            crate::guest::await_word(&mut self.lines, "settled", SETTLE_TIMEOUT)
                .map_err(|e| fail(format!("the guest did not finish mounting its shares: {e}")))?;
            self.unsettled = false;
        }
        Ok(())
    }

    fn moved(&mut self, dir: &Path) {
        self.saved.dir = Project::at(dir).state_dir().join("state");
        self.disk = Project::at(dir).disk_path();
    }

    fn copy_disk(&mut self, dest: &Path, memory: Option<&Path>) -> Result<(), RuntimeError> {
        // `stop` drains and flushes every block device: while the guest is
        // paused, the qcow2 file on the host is whole.
        let mut q = Qmp::connect(&self.qmp_socket, Duration::from_secs(5))
            .map_err(|e| fail(format!("cannot pause the box: {e}")))?;
        if memory.is_some() {
            q.execute("migrate-set-capabilities", ignore_shared())
                .map_err(|e| fail(format!("cannot prepare the box's memory copy: {e}")))?;
        }
        q.execute("stop", json!({}))
            .map_err(|e| fail(format!("cannot pause the box: {e}")))?;
        let copied = (|| -> Result<(), crate::VmError> {
            if let Some(dir) = memory {
                // The devices (a migration stream; the RAM stays in its file,
                // x-ignore-shared) and a copy of the RAM, both of this pause:
                // the source goes on afterwards (`cont` from postmigrate).
                let state = dir.join("dev.state");
                q.execute(
                    "migrate",
                    json!({ "uri": format!("file:{}", state.display()) }),
                )?;
                q.wait_migration(Duration::from_secs(120))?;
                let ram = dir.join("ram");
                if self.ram_in_memory {
                    copy_guest_ram(self.qemu.0.id(), &ram)?;
                } else {
                    crate::snapshot::copy_sparse(&self.saved.ram(), &ram)?;
                }
                let record = Record {
                    fingerprint: self.fingerprint.clone(),
                    dev_state_sha256: sha256_of(&state).map_err(|e| {
                        crate::VmError::Setup(format!("cannot read {}: {e}", state.display()))
                    })?,
                    moves: Vec::new(),
                    identity: false,
                };
                let text = serde_json::to_string(&record)
                    .map_err(|e| crate::VmError::Setup(e.to_string()))?;
                fs::write(dir.join("record.json"), text).map_err(|e| {
                    crate::VmError::Setup(format!("cannot write the fork's record: {e}"))
                })?;
            }
            crate::snapshot::copy_sparse(&self.disk, dest)
        })();
        let resumed = q.execute("cont", json!({}));
        copied.map_err(|e| fail(e.to_string()))?;
        resumed.map_err(|e| fail(format!("the box did not go on after the copy: {e}")))?;
        Ok(())
    }

    fn suspend(mut self: Box<Self>, events: &mut dyn StartEvents) -> Result<(), RuntimeError> {
        events.log("suspending: saving the devices (the memory is already in its file)");
        let tmp = self.saved.dev_state().with_extension("tmp");
        let started = Instant::now();
        let saved = (|| -> Result<(), crate::VmError> {
            let mut q = Qmp::connect(&self.qmp_socket, Duration::from_secs(5))?;
            q.execute("migrate-set-capabilities", ignore_shared())?;
            q.execute("stop", json!({}))?;
            q.execute(
                "migrate",
                json!({ "uri": format!("file:{}", tmp.display()) }),
            )?;
            q.wait_migration(Duration::from_secs(120))?;
            if self.ram_in_memory {
                // While QEMU is paused and alive: its memory, through its fd.
                copy_guest_ram(self.qemu.0.id(), &self.saved.ram())?;
            }
            let _ = q.execute("quit", json!({}));
            Ok(())
        })();
        if let Err(e) = saved {
            let _ = fs::remove_file(&tmp);
            events.log(&format!("cannot suspend ({e}); powering off instead"));
            if let Ok(mut q) = Qmp::connect(&self.qmp_socket, Duration::from_secs(2)) {
                let _ = q.execute("cont", json!({}));
            }
            self.shutdown(events);
            return Err(fail(format!("cannot suspend: {e}")));
        }
        // QEMU quits; its memory file must be on disk before the state counts.
        let wait = Instant::now();
        while wait.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.qemu.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(std::mem::take(&mut self.helpers));
        let durable = fs::File::open(self.saved.ram())
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::File::open(&tmp).and_then(|f| f.sync_all()))
            .and_then(|()| {
                let record = Record {
                    fingerprint: self.fingerprint.clone(),
                    dev_state_sha256: sha256_of(&tmp)?,
                    moves: Vec::new(),
                    identity: false,
                };
                let text = serde_json::to_string(&record).map_err(std::io::Error::other)?;
                fs::write(&self.saved.record, text)
            })
            .and_then(|()| fs::rename(&tmp, self.saved.dev_state()));
        match durable {
            Ok(()) => {
                events.log(&format!(
                    "suspended in {:.2} s",
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Err(e) => {
                self.saved.discard();
                Err(fail(format!("cannot keep the suspended state: {e}")))
            }
        }
    }
}

/// A guest resumed from its image's template takes the session's identity:
/// a new SSH host key (made on the host; pinned once the guest says
/// `identified`) and a new machine-id (the explain text follows `settle`).
/// Returns the control line and the key (its type and blob) to pin.
fn identity_line(run_dir: &Path) -> Result<(String, String, String), RuntimeError> {
    let (private, public) = ssh::new_host_key(run_dir).map_err(vm)?;
    let (kind, blob) = public
        .rsplit_once(' ')
        .and_then(|(key, _comment)| ssh::parse_host_key(key))
        .ok_or_else(|| fail(format!("ssh-keygen made an unexpected key: {public}")))?;
    let machine_id = uuid_v4().replace('-', "");
    let line = format!(
        "identity {} {machine_id} {blob}\n",
        crate::guest::escaped(&private),
    );
    Ok((line, kind, blob))
}

/// Starts virtiofsd for each share and QEMU, hands the guest its
/// configuration and waits until it reports ready.
#[allow(clippy::too_many_arguments)]
fn start_machine(
    req: &StartRequest<'_>,
    project: &Project,
    accel: Accel,
    keys: &ssh::ClientKeys,
    saved: &SavedState,
    fingerprint: &Fingerprint,
    resume: bool,
    events: &mut dyn StartEvents,
) -> Result<VmMachine, Start> {
    let run_dir = req.run_dir;
    let image = req.config.image.dir(req.vibebox_home);
    let empty = run_dir.join("empty");
    // Sockets of an earlier attempt must not be mistaken for new ones.
    if let Ok(rd) = fs::read_dir(run_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sock") && name != "net.sock" {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    events.progress("starting virtiofsd for the mounts");
    let cache = req.host_home.join(".cache/vibebox");
    let virtiofsd = virtiofs::find_virtiofsd(&cache).ok_or_else(|| {
        fail("virtiofsd is not installed; run scripts/install-deps (it builds it with cargo)")
    })?;
    let mut helpers = Vec::new();
    let mut shares = Vec::new();
    let mut guest_mounts = Vec::new();
    let vlog = project.logs_dir().join("virtiofsd.log");
    for (i, m) in req.plan.shares.iter().enumerate() {
        let socket = run_dir.join(format!("fs{i}.sock"));
        if !m.host.is_dir() {
            return Err(fail(format!(
                "mount {} -> {}: the host path is not a directory",
                m.host.display(),
                m.guest
            ))
            .into());
        }
        let spec = ShareSpec {
            shared_dir: m.host.clone(),
            socket: socket.clone(),
            readonly: m.mode == MountMode::ReadOnly,
            guards: m.guards.iter().map(|g| (g.kind, g.path.clone())).collect(),
            guest_uid: 1000,
        };
        helpers.push(
            spawn_tied(&mut virtiofs::command(&virtiofsd, &spec, &empty), &vlog).map_err(vm)?,
        );
        wait_for(&socket, Duration::from_secs(10), &mut helpers).map_err(|e| {
            fail(format!(
                "virtiofsd for {} did not start (see {}): {e}",
                m.host.display(),
                vlog.display()
            ))
        })?;
        let tag = format!("m{i}");
        shares.push(Share {
            tag: tag.clone(),
            socket,
        });
        guest_mounts.push((tag, m.mode, m.guest.clone()));
    }

    events.progress(&format!(
        "{} the guest ({})",
        if resume { "resuming" } else { "booting" },
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG emulation: KVM is not usable here",
        }
    ));
    // The guest's memory. A resumed box runs on its saved file; a booted one
    // on a fresh file in memory (tmpfs) where there is one — a file on disk
    // costs ~0.5 s per boot here in page-cache writeback — which a suspend
    // copies to `.vibebox/state/`. Only this user can read it.
    let ram = if resume {
        saved.ram()
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        let session = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ram = memory_ram_path(&session).unwrap_or_else(|| saved.ram());
        let _ = fs::remove_file(&ram);
        let _ = fs::remove_file(saved.ram());
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&ram)
            .map_err(|e| fail(format!("cannot create {}: {e}", ram.display())))?;
        ram
    };
    let machine = Machine {
        accel,
        cpus: req.config.cpu_count,
        ram_mb: req.config.ram_mb,
        kernel: image.join("vmlinux"),
        initrd: image.join("initrd.img"),
        base_disk: image.join("disk.img"),
        overlay: project.disk_path(),
        tsc_khz: if accel == Accel::Tcg { tsc_khz() } else { None },
        net_socket: req.network.socket.clone(),
        control_socket: run_dir.join("ctl.sock"),
        qmp_socket: run_dir.join("qmp.sock"),
        console_socket: run_dir.join("console.sock"),
        shares,
        ram_file: Some(ram.clone()),
        incoming: resume,
        vmgenid: Some(uuid_v4()),
    };
    start_console_log(
        &machine.console_socket,
        &project.logs_dir().join("console.log"),
    )?;
    let mut qemu_cmd = Command::new("qemu-system-x86_64");
    qemu_cmd.args(machine.args());
    events.log(&format!("qemu-system-x86_64 {}", machine.args().join(" ")));
    let qemu = spawn_tied(&mut qemu_cmd, &project.logs_dir().join("qemu.log")).map_err(vm)?;
    let qemu_started = Instant::now();
    let mut all = vec![qemu];
    wait_for(&machine.control_socket, Duration::from_secs(20), &mut all).map_err(|e| {
        fail(format!(
            "QEMU did not start (see .vibebox/logs/qemu.log): {e}"
        ))
    })?;
    let qemu = all.remove(0);
    let ram_in_memory = ram != saved.ram();
    if ram_in_memory {
        // Once QEMU has it open, nothing else needs the name, and a
        // supervisor killed later leaves no guest memory behind in tmpfs.
        // Not before: QEMU opens its memory after it made the control
        // socket, and a name removed too early is made again by QEMU (0644)
        // and left in tmpfs for good when it exits.
        wait_until_open(qemu.0.id(), &ram, Duration::from_secs(20));
        let _ = fs::remove_file(&ram);
    }
    // The socket file appears when QEMU binds it, a moment before it listens.
    let mut control = {
        let mut tries = 0;
        loop {
            match UnixStream::connect(&machine.control_socket) {
                Ok(c) => break c,
                Err(_) if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(
                        fail(format!("cannot connect to the guest's control port: {e}")).into(),
                    )
                }
            }
        }
    };
    let io = |e: std::io::Error| fail(format!("the guest's control port failed: {e}"));
    let mut lines = crate::guest::ControlLines::new(&control).map_err(io)?;
    if resume {
        // The guest's memory is the RAM file; load its devices and go on.
        let mut qmp = Qmp::connect(&machine.qmp_socket, Duration::from_secs(20)).map_err(vm)?;
        qmp.execute("migrate-set-capabilities", ignore_shared())
            .map_err(vm)?;
        qmp.execute(
            "migrate-incoming",
            json!({ "uri": format!("file:{}", saved.dev_state().display()) }),
        )
        .map_err(vm)?;
        let status = wait_loaded(&mut qmp).map_err(vm)?;
        if status == "paused" {
            qmp.execute("cont", json!({})).map_err(vm)?;
        }
        // The guest's clock stood still while the box was saved: it sets
        // it (a program) while it reads the next lines.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        control
            .write_all(format!("time {now}\n").as_bytes())
            .map_err(io)?;
        // What the first SSH connection needs (the guest answers at once:
        // no program to start): the session's client key, and a box from
        // its image's template takes its own identity.
        control.write_all(keys.key_line().as_bytes()).map_err(io)?;
        let identity = if saved.new_identity() {
            let (line, kind, blob) = identity_line(run_dir)?;
            control.write_all(line.as_bytes()).map_err(io)?;
            Some((kind, blob))
        } else {
            None
        };
        // Then, while the host opens that connection: for a fork or a
        // template, its mounts move to the session's guest paths. The guest
        // says "settled" when all is done, its clock too (no client runs a
        // command before).
        for (from, to) in saved.moves() {
            control
                .write_all(
                    format!(
                        "move {} {}\n",
                        crate::guest::escaped(from.as_bytes()),
                        crate::guest::escaped(to.as_bytes())
                    )
                    .as_bytes(),
                )
                .map_err(io)?;
            events.log(&format!("moving the mount {from} to {to}"));
        }
        control.write_all(b"settle\n").map_err(io)?;
        // Then the explain text of this start (a fork's or a template's
        // project, a config changed while the box was saved).
        control
            .write_all(crate::guest::explain_line(&req.plan.explain).as_bytes())
            .map_err(io)?;
        crate::guest::await_word(&mut lines, "keyed", ANSWER_TIMEOUT).map_err(fail)?;
        if let Some((kind, blob)) = identity {
            crate::guest::await_word(&mut lines, "identified", ANSWER_TIMEOUT).map_err(fail)?;
            ssh::pin_host_key(&project.ssh_dir(), &kind, &blob).map_err(vm)?;
            events.log("the box took its own identity (SSH host key, machine-id)");
            events.log("resumed the image's template");
        } else {
            events.log("resumed the suspended box");
        }
        return Ok(VmMachine {
            qemu,
            helpers,
            control,
            qmp_socket: machine.qmp_socket.clone(),
            saved: saved.clone(),
            fingerprint: fingerprint.clone(),
            ram_in_memory,
            disk: machine.overlay.clone(),
            lines,
            unsettled: true,
            project_gone: false,
        });
    }
    let msg = crate::guest::config_message(keys, req.network, &guest_mounts, &req.plan.explain);
    control.write_all(msg.as_bytes()).map_err(io)?;
    let mut running = VmMachine {
        qemu,
        helpers,
        control,
        qmp_socket: machine.qmp_socket.clone(),
        saved: saved.clone(),
        fingerprint: fingerprint.clone(),
        ram_in_memory,
        disk: machine.overlay.clone(),
        lines,
        unsettled: true,
        project_gone: false,
    };
    // Wait for "ready <host key>" ("settled" follows once the shares are mounted).
    let start = Instant::now();
    let ready =
        crate::guest::await_ready(&mut running.lines, &project.ssh_dir(), BOOT_TIMEOUT, || {
            running.qemu.0.try_wait().ok().flatten()
        });
    match ready {
        Ok(()) => {}
        Err(NotReady::Ended(status)) => {
            let msg = format!(
                "QEMU exited during boot ({status}); the guest console ended with:\n{}\nQEMU said:\n{}",
                console_tail(&project.logs_dir().join("console.log")),
                console_tail(&project.logs_dir().join("qemu.log"))
            );
            if status.success() && qemu_started.elapsed() < Duration::from_secs(5) {
                return Err(Start::EarlyExit(msg));
            }
            return Err(fail(msg).into());
        }
        Err(other) => {
            let msg = other
                .message("the guest", BOOT_TIMEOUT, ".vibebox/logs/console.log")
                .unwrap_or_default();
            // A guest that is still running is powered off first.
            if matches!(other, NotReady::Timeout | NotReady::TooLong) {
                Box::new(running).shutdown(events);
            }
            return Err(fail(msg).into());
        }
    }
    events.log(&format!(
        "guest ready after {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forks_record_maps_the_project_and_moves_its_mount() {
        let rw = MountMode::ReadWrite;
        let record = Record {
            fingerprint: Fingerprint {
                base_sha: "b".into(),
                guest_version: "g".into(),
                accel: "Tcg".into(),
                cpus: 2,
                ram_mb: 1024,
                shares: vec![
                    ("/w/app".into(), "/home/vibecoder/app".into(), rw),
                    ("/w/app/data".into(), "/home/vibecoder/data".into(), rw),
                    ("/w/app/x".into(), "/home/vibecoder/app/x".into(), rw),
                    ("/w/apple".into(), "/home/vibecoder/apple".into(), rw),
                    ("/h/.codex".into(), "/home/vibecoder/.codex".into(), rw),
                ],
            },
            dev_state_sha256: "s".into(),
            moves: Vec::new(),
            identity: false,
        };
        let fork = record.for_fork(Path::new("/w/app"), Path::new("/v/app-2"));
        let shares: Vec<(String, String)> = fork
            .fingerprint
            .shares
            .iter()
            .map(|(h, g, _)| (h.display().to_string(), g.clone()))
            .collect();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            shares,
            pairs(&[
                ("/v/app-2", "/home/vibecoder/app-2"),
                ("/v/app-2/data", "/home/vibecoder/data"),
                ("/v/app-2/x", "/home/vibecoder/app-2/x"),
                // Only paths inside the project: not a sibling sharing a prefix.
                ("/w/apple", "/home/vibecoder/apple"),
                ("/h/.codex", "/home/vibecoder/.codex"),
            ])
        );
        assert_eq!(
            fork.moves,
            pairs(&[("/home/vibecoder/app", "/home/vibecoder/app-2")])
        );
        assert_eq!(fork.dev_state_sha256, "s");
        // A fork of a fork keeps the earlier move; the same name moves nothing.
        let again = fork.for_fork(Path::new("/v/app-2"), Path::new("/u/app-2"));
        assert_eq!(again.moves, fork.moves);
        assert_eq!(again.fingerprint.shares[0].1, "/home/vibecoder/app-2");
    }

    #[test]
    fn the_memory_directory_must_be_ours_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let uid = rustix::process::getuid().as_raw();
        let base = tempfile::tempdir().unwrap();
        let dir = private_dir_in(base.path(), uid).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Made first and left open to others: refused.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(private_dir_in(base.path(), uid), None);
        // A symlink planted in its place: refused.
        fs::remove_dir(&dir).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &dir).unwrap();
        assert_eq!(private_dir_in(base.path(), uid), None);
        // Owned by another user (here: asked for uid+1, owned by us): refused.
        assert_eq!(private_dir_in(base.path(), uid + 1), None);
    }

    #[test]
    fn the_console_log_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let log = dir.path().join("console.log");
        start_console_log(&socket, &log).unwrap();
        let mut qemu = UnixStream::connect(&socket).unwrap();
        let line = [b'x'; 1023];
        for _ in 0..(CONSOLE_LOG_MAX as usize * 5 / 2 / 1024) {
            qemu.write_all(&line).unwrap();
            qemu.write_all(b"\n").unwrap();
        }
        drop(qemu);
        let total = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        while total(&log) == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(total(&log) <= CONSOLE_LOG_MAX);
        assert!(total(&log.with_extension("log.1")) <= CONSOLE_LOG_MAX);
        assert!(total(&log.with_extension("log.1")) > 0, "it rotated");
    }
}
