//! Templates: a new session starts from a saved first boot of its image
//! instead of booting.
//!
//! The first new session of an image (for one machine shape: accelerator,
//! CPUs, memory, disk size and the modes of its mounts) boots a **template
//! box** outside any session: its disk is a fresh overlay of the image, its
//! shares are empty directories of the template (mounted in the guest under
//! [`GUEST_ROOT`]), its network a socket nobody answers, its client key a
//! throwaway one. Once its guest reports ready, it is suspended into
//! `$VIBEBOX_HOME/templates/<image>/<shape>/`. It never saw a project's file.
//!
//! Every new session of that image and shape then copies the template's disk
//! and memory into its own `.vibebox/` and resumes them: the guest moves each
//! template mount to the session's guest path (the session's own virtiofsd
//! behind it), takes the session's client key, then a new identity — a new
//! SSH host key, which the host pins as on a boot, a new machine-id, the
//! session's explain text — and QEMU gives it a new vmgenid (its RNG is
//! reseeded). Where a template cannot be made or used, the session boots and
//! says why.
//!
//! The template's files live outside every project, under the host user's
//! `VIBEBOX_HOME`, which no box can write; its device state is loaded only
//! when its SHA-256 is the one recorded when it was saved.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vibebox_core::mounts::MountMode;
use vibebox_core::plan::PlannedShare;
use vibebox_core::project::Project;
use vibebox_core::runtime::{Machine as _, NetworkEndpoint, StartEvents, StartRequest};

use crate::qemu::Accel;
use crate::runtime::{sha256_of, Fingerprint, Record, SavedState};

/// Where a template box mounts its shares in the guest (`m0`, `m1`, …).
pub const GUEST_ROOT: &str = "/run/vibebox/template";

/// What a template is made for: a session can start from it only when all
/// of this is the same (the migration stream describes exactly this machine).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    base_sha: String,
    guest_version: String,
    accel: String,
    cpus: u32,
    ram_mb: u32,
    disk_gb: u32,
    /// One per share, in the plan's order.
    modes: Vec<MountMode>,
}

impl Shape {
    /// The shape of the machine `req` asks for.
    pub fn of(req: &StartRequest<'_>, accel: Accel, base_sha: &str) -> Shape {
        Shape {
            base_sha: base_sha.to_string(),
            guest_version: crate::qemu::machine_version(),
            accel: format!("{accel:?}"),
            cpus: req.config.cpu_count,
            ram_mb: req.config.ram_mb,
            disk_gb: req.config.disk_gb,
            modes: req.plan.shares.iter().map(|s| s.mode).collect(),
        }
    }

    /// A short name for the directory of this shape's template.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = serde_json::to_string(self).unwrap_or_default();
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// What the host recorded when it saved a template.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TemplateRecord {
    shape: Shape,
    dev_state_sha256: String,
    /// Where each share is mounted in the template's guest.
    guest_paths: Vec<String>,
    /// When it was made (RFC 3339).
    made: String,
    /// How long the template box took to boot, in seconds.
    boot_seconds: f64,
}

/// A saved template, checked.
#[derive(Debug, Clone)]
pub struct Template {
    dir: PathBuf,
    record: TemplateRecord,
}

/// `$VIBEBOX_HOME/templates/<image>`: every template of an image.
pub fn image_templates(vibebox_home: &Path, image: &str) -> PathBuf {
    vibebox_home.join("templates").join(image)
}

fn work(dir: &Path) -> Project {
    Project::at(dir)
}

fn state_of(dir: &Path) -> SavedState {
    SavedState::in_dir(
        work(dir).state_dir().join("state"),
        dir.join("suspended.json"),
    )
}

fn record_path(dir: &Path) -> PathBuf {
    dir.join("template.json")
}

impl Template {
    /// The template at `dir`, if it is whole and made for `shape`.
    fn open(dir: &Path, shape: &Shape) -> Option<Template> {
        let text = fs::read_to_string(record_path(dir)).ok()?;
        let record: TemplateRecord = serde_json::from_str(&text).ok()?;
        let state = state_of(dir);
        let whole = record.shape == *shape
            && record.guest_paths.len() == shape.modes.len()
            && state.ram().is_file()
            && work(dir).disk_path().is_file()
            && sha256_of(&state.dev_state()).ok()? == record.dev_state_sha256;
        whole.then(|| Template {
            dir: dir.to_path_buf(),
            record,
        })
    }

    /// Where it is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies the template's disk and memory into the session's `.vibebox/`
    /// and vouches for them: the next start of `project` resumes them, moves
    /// the template's mounts to `guest_paths` and takes a new identity.
    pub fn adopt(
        &self,
        project: &Project,
        saved: &SavedState,
        fingerprint: &Fingerprint,
        guest_paths: &[String],
    ) -> Result<(), crate::VmError> {
        use std::os::unix::fs::PermissionsExt;
        let from = state_of(&self.dir);
        let setup = |what: &str, e: std::io::Error| {
            crate::VmError::Setup(format!("cannot copy the template's {what}: {e}"))
        };
        let disk = project.disk_path();
        let _ = fs::remove_file(&disk);
        crate::snapshot::copy_sparse(&work(&self.dir).disk_path(), &disk)?;
        let _ = fs::remove_file(saved.ram());
        crate::snapshot::copy_sparse(&from.ram(), &saved.ram())?;
        fs::set_permissions(saved.ram(), fs::Permissions::from_mode(0o600))
            .map_err(|e| setup("memory", e))?;
        let _ = fs::remove_file(saved.dev_state());
        crate::snapshot::copy_sparse(&from.dev_state(), &saved.dev_state())?;
        let record = Record {
            fingerprint: fingerprint.clone(),
            dev_state_sha256: self.record.dev_state_sha256.clone(),
            moves: self
                .record
                .guest_paths
                .iter()
                .cloned()
                .zip(guest_paths.iter().cloned())
                .collect(),
            identity: true,
        };
        let text =
            serde_json::to_string(&record).map_err(|e| crate::VmError::Setup(e.to_string()))?;
        saved.write_record_text(&text)
    }
}

/// The template for the machine `req` asks for: the saved one, or one made
/// now (once; another supervisor making the same template is waited for).
pub fn get_or_make(
    req: &StartRequest<'_>,
    accel: Accel,
    base_sha: &str,
    events: &mut dyn StartEvents,
) -> Result<Template, String> {
    use std::os::unix::fs::DirBuilderExt;
    let shape = Shape::of(req, accel, base_sha);
    let root = image_templates(req.vibebox_home, req.config.image.as_str());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let dir = root.join(shape.key());
    if let Some(t) = Template::open(&dir, &shape) {
        return Ok(t);
    }
    let lock_path = root.join(format!("{}.lock", shape.key()));
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    if let Some(t) = Template::open(&dir, &shape) {
        return Ok(t);
    }
    // Under the lock, a half-made template of this shape is what a killed
    // supervisor left.
    let partial = format!("{}.new-", shape.key());
    for e in fs::read_dir(&root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&partial) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    events.progress(&format!(
        "making the template of image `{}` for new sessions (once; later new sessions start from it)",
        req.config.image
    ));
    let made = make(req, accel, base_sha, &shape, &root, events);
    drop(lock);
    let (new_dir, boot_seconds) = made?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&new_dir, &dir).map_err(|e| format!("cannot keep the template: {e}"))?;
    events.log(&format!(
        "made the template {} (its box booted in {boot_seconds:.2} s)",
        dir.display()
    ));
    Template::open(&dir, &shape).ok_or_else(|| "the template just made is not whole".into())
}

/// Boots a template box and suspends it into a new directory under `root`;
/// returns that directory and the boot's duration.
fn make(
    req: &StartRequest<'_>,
    accel: Accel,
    base_sha: &str,
    shape: &Shape,
    root: &Path,
    events: &mut dyn StartEvents,
) -> Result<(PathBuf, f64), String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = root.join(format!("{}.new-{}", shape.key(), std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let run_dir = req.run_dir.join(format!("t{}", std::process::id()));
    let _ = fs::remove_dir_all(&run_dir);
    let made = (|| -> Result<f64, String> {
        let mk = |d: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))
        };
        let project = work(&dir);
        let saved = state_of(&dir);
        for d in [
            dir.as_path(),
            &project.logs_dir(),
            saved.ram_dir(),
            &run_dir,
            &run_dir.join("empty"),
        ] {
            mk(d)?;
        }
        // Its shares: empty directories, mounted where no session mounts.
        let mut shares = Vec::new();
        for (i, mode) in shape.modes.iter().enumerate() {
            let host = dir.join(format!("share{i}"));
            mk(&host)?;
            shares.push(PlannedShare {
                host,
                guest: format!("{GUEST_ROOT}/m{i}"),
                mode: *mode,
                guards: Vec::new(),
            });
        }
        let mut plan = req.plan.clone();
        plan.project_dir = dir.clone();
        plan.shares = shares;
        plan.explain = String::new();
        plan.warnings = Vec::new();
        // Its network: a socket that takes QEMU's frames and drops them.
        let network = NetworkEndpoint {
            socket: run_dir.join("net.sock"),
            frames_socket: run_dir.join("net-frames.sock"),
            ..req.network.clone()
        };
        let listener = std::os::unix::net::UnixListener::bind(&network.socket)
            .map_err(|e| format!("cannot listen on {}: {e}", network.socket.display()))?;
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            }
        });
        let request = StartRequest {
            plan: &plan,
            config: req.config,
            vibebox_home: req.vibebox_home,
            host_home: req.host_home,
            run_dir: &run_dir,
            network: &network,
        };
        let image = req.config.image.dir(req.vibebox_home);
        crate::disk::ensure_overlay(
            &image.join("disk.img"),
            &project.disk_path(),
            req.config.disk_gb,
        )
        .map_err(|e| e.to_string())?;
        let keys = crate::ssh::ensure_keypair(&project.ssh_dir()).map_err(|e| e.to_string())?;
        let fingerprint = Fingerprint::of(&request, accel, base_sha);
        let started = Instant::now();
        let mut machine = crate::runtime::boot_with_retries(
            &request,
            &project,
            accel,
            &keys,
            &saved,
            &fingerprint,
            events,
        )
        .map_err(|e| format!("its box did not boot: {e}"))?;
        // Saved only once its shares are mounted, and what it wrote (its
        // host key) is on its disk, not only in its memory: a session killed
        // before its own first journal commit boots from that disk.
        if let Err(e) = machine.settle().and_then(|()| machine.sync_disk()) {
            Box::new(machine).shutdown(events);
            return Err(format!("its box did not boot: {e}"));
        }
        let boot_seconds = started.elapsed().as_secs_f64();
        Box::new(machine)
            .suspend(events)
            .map_err(|e| format!("its box could not be saved: {e}"))?;
        let saved_record: Record = fs::read_to_string(dir.join("suspended.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or("the template box's saved state has no record")?;
        let record = TemplateRecord {
            shape: shape.clone(),
            dev_state_sha256: saved_record.dev_state_sha256,
            guest_paths: plan.shares.iter().map(|s| s.guest.clone()).collect(),
            made: jiff::Timestamp::now().to_string(),
            boot_seconds,
        };
        // Nothing of the template box's key is needed again.
        let _ = fs::remove_dir_all(project.ssh_dir());
        let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
        fs::write(record_path(&dir), text)
            .map_err(|e| format!("cannot write the template's record: {e}"))?;
        Ok(boot_seconds)
    })();
    let _ = fs::remove_dir_all(&run_dir);
    match made {
        Ok(s) => Ok((dir, s)),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Every template of every image, with its size on disk.
pub fn list(vibebox_home: &Path) -> Vec<(String, PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(images) = fs::read_dir(vibebox_home.join("templates")) else {
        return out;
    };
    for image in images.flatten() {
        let Ok(shapes) = fs::read_dir(image.path()) else {
            continue;
        };
        for t in shapes.flatten() {
            let p = t.path();
            if p.is_dir() && record_path(&p).is_file() {
                let size = vibebox_core::project::allocated_bytes(&p);
                out.push((image.file_name().to_string_lossy().into_owned(), p, size));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            base_sha: "abc".into(),
            guest_version: "1".into(),
            accel: "Tcg".into(),
            cpus: 2,
            ram_mb: 1024,
            disk_gb: 5,
            modes: vec![MountMode::ReadWrite],
        }
    }

    #[test]
    fn the_key_follows_every_part_of_the_shape() {
        let a = shape();
        assert_eq!(a.key(), shape().key());
        assert_eq!(a.key().len(), 16);
        let mut b = shape();
        b.modes.push(MountMode::ReadOnly);
        let mut c = shape();
        c.ram_mb = 2048;
        let mut d = shape();
        d.base_sha = "abd".into();
        for other in [b, c, d] {
            assert_ne!(a.key(), other.key());
        }
    }

    #[test]
    fn a_template_is_used_only_whole_and_for_its_shape() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        let state = state_of(&dir);
        fs::create_dir_all(state.ram_dir()).unwrap();
        fs::write(state.ram(), b"ram").unwrap();
        fs::write(state.dev_state(), b"devices").unwrap();
        fs::write(work(&dir).disk_path(), b"disk").unwrap();
        let record = TemplateRecord {
            shape: shape(),
            dev_state_sha256: sha256_of(&state.dev_state()).unwrap(),
            guest_paths: vec![format!("{GUEST_ROOT}/m0")],
            made: "now".into(),
            boot_seconds: 1.0,
        };
        fs::write(record_path(&dir), serde_json::to_string(&record).unwrap()).unwrap();
        assert!(Template::open(&dir, &shape()).is_some());
        // Another shape.
        let mut other = shape();
        other.cpus = 1;
        assert!(Template::open(&dir, &other).is_none());
        // Devices that are not the ones saved.
        fs::write(state.dev_state(), b"devices, changed").unwrap();
        assert!(Template::open(&dir, &shape()).is_none());
        fs::write(state.dev_state(), b"devices").unwrap();
        // A symlink in place of the devices is not followed.
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, b"devices").unwrap();
        fs::remove_file(state.dev_state()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.dev_state()).unwrap();
        assert!(Template::open(&dir, &shape()).is_none());
        fs::remove_file(state.dev_state()).unwrap();
        fs::write(state.dev_state(), b"devices").unwrap();
        // No memory.
        fs::remove_file(state.ram()).unwrap();
        assert!(Template::open(&dir, &shape()).is_none());
    }
}
