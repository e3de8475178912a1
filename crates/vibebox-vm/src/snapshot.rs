//! Named snapshots of a session at rest.
//!
//! The disk is a qcow2 internal snapshot of the instance disk (copy-on-write
//! inside the same file: no full copy). When the box was suspended, its
//! memory and devices are kept too (`.vibebox/snapshots/<name>/`: a sparse
//! copy of the RAM file and the device state), so restoring brings back the
//! processes as they were. As for a resume, the device state is loaded only
//! if the host's record vouches for it: `$VIBEBOX_HOME/snapshots/<session>/
//! <name>.json` holds its SHA-256, outside the project.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use vibebox_core::project::{allocated_bytes, Project};

use crate::runtime::{sha256_of, Record, SavedState};
use crate::VmError;

/// What the host records about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// Whether memory and processes were kept (the box was suspended).
    pub memory: bool,
    /// Host disk used by its memory copy, in bytes.
    pub memory_bytes: u64,
    /// The suspended record it was made from (fingerprint and hash), when
    /// `memory`.
    #[serde(default)]
    pub saved: Option<serde_json::Value>,
}

/// Why a snapshot operation failed.
fn err(msg: impl Into<String>) -> VmError {
    VmError::Setup(msg.into())
}

/// A snapshot name: the same rule as image names.
pub fn check_name(name: &str) -> Result<(), VmError> {
    vibebox_core::image::ImageName::parse(name)
        .map(|_| ())
        .map_err(|_| {
            err(format!(
                "`{}` is not a valid snapshot name (allowed: {})",
                vibebox_core::text::for_terminal(name),
                vibebox_core::image::IMAGE_NAME_RULE
            ))
        })
}

/// The snapshots of the session of `project`.
pub struct Snapshots {
    project: Project,
    records: PathBuf,
    saved: SavedState,
}

fn qemu_img(args: &[&str], disk: &Path) -> Result<String, VmError> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(disk)
        .output()
        .map_err(|e| err(format!("cannot run qemu-img ({e}); install qemu-utils")))?;
    if !out.status.success() {
        return Err(err(format!(
            "qemu-img {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies `from` to `to` (sparse, reflinked where the filesystem can).
pub(crate) fn copy_sparse(from: &Path, to: &Path) -> Result<(), VmError> {
    let out = Command::new("cp")
        .args(["--reflink=auto", "--sparse=always", "--"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| err(format!("cannot run cp: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "cannot copy {}: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Snapshots {
    /// The snapshots of `project`'s session (records under `vibebox_home`).
    pub fn of(project: &Project, vibebox_home: &Path) -> Result<Snapshots, VmError> {
        let session = project
            .read_session_id()
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err(format!("{} has no session yet", project.dir().display())))?;
        Ok(Snapshots {
            project: project.clone(),
            records: vibebox_home.join("snapshots").join(session.to_string()),
            saved: SavedState::locate(project, vibebox_home).map_err(|e| err(e.0))?,
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.project.state_dir().join("snapshots").join(name)
    }

    fn record(&self, name: &str) -> PathBuf {
        self.records.join(format!("{name}.json"))
    }

    /// Every snapshot, oldest first.
    pub fn list(&self) -> Vec<SnapshotInfo> {
        let mut out: Vec<SnapshotInfo> = fs::read_dir(&self.records)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| fs::read_to_string(e.path()).ok())
                    .filter_map(|t| serde_json::from_str(&t).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.created.cmp(&b.created));
        out
    }

    /// Takes snapshot `name` of the box at rest: its disk, and its memory
    /// when it is suspended.
    pub fn save(&self, name: &str) -> Result<SnapshotInfo, VmError> {
        use std::os::unix::fs::DirBuilderExt;
        check_name(name)?;
        if self.record(name).exists() {
            return Err(err(format!(
                "a snapshot named `{name}` exists; remove it first (vibebox snapshot rm {name})"
            )));
        }
        let disk = self.project.disk_path();
        if !disk.is_file() {
            return Err(err("the box has no disk yet: start it once first"));
        }
        crate::disk::check_overlay(&disk)?;
        let dir = self.dir(name);
        for d in [dir.parent().unwrap_or(&dir), &dir, &self.records] {
            match fs::DirBuilder::new().mode(0o700).recursive(true).create(d) {
                Ok(()) => {}
                Err(e) => return Err(err(format!("cannot create {}: {e}", d.display()))),
            }
        }
        let saved = self.saved.record_value();
        let mut memory_bytes = 0;
        if saved.is_some() {
            copy_sparse(&self.saved.ram(), &dir.join("ram"))?;
            copy_sparse(&self.saved.dev_state(), &dir.join("dev.state"))?;
            memory_bytes =
                allocated_bytes(&dir.join("ram")) + allocated_bytes(&dir.join("dev.state"));
        }
        qemu_img(&["snapshot", "-c", name], &disk)?;
        let info = SnapshotInfo {
            name: name.to_string(),
            created: jiff::Timestamp::now().to_string(),
            memory: saved.is_some(),
            memory_bytes,
            saved,
        };
        let text = serde_json::to_string_pretty(&info).map_err(|e| err(e.to_string()))?;
        fs::write(self.record(name), text)
            .map_err(|e| err(format!("cannot write {}: {e}", self.record(name).display())))?;
        Ok(info)
    }

    /// Puts the box back to snapshot `name` (it must be at rest): the disk,
    /// and memory and processes when the snapshot has them (the next start
    /// resumes them), else the next start boots.
    pub fn restore(&self, name: &str) -> Result<SnapshotInfo, VmError> {
        check_name(name)?;
        let info = self.get(name)?;
        let disk = self.project.disk_path();
        crate::disk::check_overlay(&disk)?;
        self.saved.discard();
        qemu_img(&["snapshot", "-a", name], &disk)?;
        if let Some(record) = &info.saved {
            let dir = self.dir(name);
            // Only what this host saved: the copy must hash as recorded.
            let want = record.get("dev_state_sha256").and_then(|v| v.as_str());
            let have = sha256_of(&dir.join("dev.state")).ok();
            if want.is_none() || want != have.as_deref() {
                return Err(err(format!(
                    "the memory of snapshot `{name}` changed since it was taken; only its disk was restored (the next start boots)"
                )));
            }
            copy_sparse(&dir.join("ram"), &self.saved.ram())?;
            copy_sparse(&dir.join("dev.state"), &self.saved.dev_state())?;
            self.saved.write_record_value(record)?;
        }
        Ok(info)
    }

    /// Removes snapshot `name`.
    pub fn remove(&self, name: &str) -> Result<(), VmError> {
        check_name(name)?;
        self.get(name)?;
        let disk = self.project.disk_path();
        if disk.is_file() {
            // A disk without it (made again since) is fine.
            let _ = qemu_img(&["snapshot", "-d", name], &disk);
        }
        let _ = fs::remove_dir_all(self.dir(name));
        fs::remove_file(self.record(name)).map_err(|e| {
            err(format!(
                "cannot remove {}: {e}",
                self.record(name).display()
            ))
        })
    }

    fn get(&self, name: &str) -> Result<SnapshotInfo, VmError> {
        let text = fs::read_to_string(self.record(name)).map_err(|_| {
            err(format!(
                "there is no snapshot named `{name}` (vibebox snapshot list shows them)"
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| err(format!("the record of `{name}` is damaged: {e}")))
    }
}

/// Makes `copy` (a copy of `parent`'s instance disk, taken at rest or while
/// the box was paused) the disk of the fork `child`: snapshot `from` of the
/// parent applied when given, every internal snapshot dropped (they are the
/// parent's), the base image's record copied. `copy` is moved into place.
pub fn adopt_fork_disk(
    parent: &Project,
    child: &Project,
    copy: &Path,
    from: Option<&str>,
) -> Result<(), VmError> {
    use std::os::unix::fs::PermissionsExt;
    crate::disk::check_overlay(copy)?;
    let info = qemu_img(&["info", "--output=json", "-U"], copy)?;
    let info: serde_json::Value =
        serde_json::from_str(&info).map_err(|e| err(format!("qemu-img info: {e}")))?;
    let names: Vec<String> = info["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(name) = from {
        check_name(name)?;
        if !names.iter().any(|n| n == name) {
            return Err(err(format!(
                "the box of {} has no snapshot named `{name}` (vibebox snapshot list shows them)",
                parent.dir().display()
            )));
        }
        qemu_img(&["snapshot", "-a", name], copy)?;
    }
    for name in names {
        qemu_img(&["snapshot", "-d", &name], copy)?;
    }
    fs::set_permissions(copy, fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("cannot protect {}: {e}", copy.display())))?;
    let base = parent.state_dir().join("disk.base");
    if base.is_file() {
        copy_sparse(&base, &child.state_dir().join("disk.base"))?;
    }
    fs::rename(copy, child.disk_path()).map_err(|e| {
        err(format!(
            "cannot create {}: {e}",
            child.disk_path().display()
        ))
    })
}

/// Copies `parent`'s instance disk (the box at rest) to `to`.
pub fn copy_disk_at_rest(parent: &Project, to: &Path) -> Result<(), VmError> {
    let disk = parent.disk_path();
    if !disk.is_file() {
        return Err(err(format!(
            "the box of {} has no disk yet: start it once first",
            parent.dir().display()
        )));
    }
    crate::disk::check_overlay(&disk)?;
    copy_sparse(&disk, to)
}

/// Copies the memory of `parent`'s suspended box (RAM, devices and the
/// host's record of them) into the new directory `to`, for a fork; `false`
/// when the box is not suspended (or its state is not one this host vouches
/// for).
pub fn copy_suspended_memory(
    parent: &Project,
    vibebox_home: &Path,
    to: &Path,
) -> Result<bool, VmError> {
    use std::os::unix::fs::DirBuilderExt;
    let saved = SavedState::locate(parent, vibebox_home).map_err(|e| err(e.0))?;
    let Some(record) = saved.record_value() else {
        return Ok(false);
    };
    fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(|e| err(format!("cannot create {}: {e}", to.display())))?;
    copy_sparse(&saved.ram(), &to.join("ram"))?;
    copy_sparse(&saved.dev_state(), &to.join("dev.state"))?;
    fs::write(to.join("record.json"), record.to_string())
        .map_err(|e| err(format!("cannot write {}: {e}", to.display())))?;
    Ok(true)
}

/// Makes the memory in `from` (`ram`, `dev.state`, `record.json`: copied
/// from `parent` while its box was paused, or its suspended state) the
/// suspended state of the fork `child`, so that its first start resumes
/// where the parent was. The host's record for the child vouches for it
/// (the devices' hash is checked again); its mounts are the fork's
/// directory, and the resumed guest moves its project mount to the fork's
/// path. The parent's pinned host key goes with it (the guest keeps it);
/// the fork's own client key is handed to the guest when it resumes.
/// `from` is consumed.
pub fn adopt_fork_memory(
    parent: &Project,
    child: &Project,
    vibebox_home: &Path,
    from: &Path,
) -> Result<(), VmError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let text = fs::read_to_string(from.join("record.json"))
        .map_err(|e| err(format!("cannot read the memory's record: {e}")))?;
    let record: Record = serde_json::from_str(&text)
        .map_err(|e| err(format!("the memory's record is damaged: {e}")))?;
    let dev_state = from.join("dev.state");
    let sha = sha256_of(&dev_state)
        .map_err(|e| err(format!("cannot read {}: {e}", dev_state.display())))?;
    if sha != record.dev_state_sha256 {
        return Err(err("the copied device state does not match its record"));
    }
    let ssh = child.ssh_dir();
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&ssh)
        .map_err(|e| err(format!("cannot create {}: {e}", ssh.display())))?;
    let known = crate::ssh::known_hosts_path(&parent.ssh_dir());
    fs::copy(&known, crate::ssh::known_hosts_path(&ssh))
        .map_err(|e| err(format!("cannot copy {}: {e}", known.display())))?;
    let saved = SavedState::at(child, vibebox_home).map_err(|e| err(e.0))?;
    let ram = from.join("ram");
    fs::set_permissions(&ram, fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("cannot protect {}: {e}", ram.display())))?;
    for (f, to) in [(ram, saved.ram()), (dev_state, saved.dev_state())] {
        fs::rename(&f, &to).map_err(|e| err(format!("cannot create {}: {e}", to.display())))?;
    }
    let text = serde_json::to_string(&record.for_fork(parent.dir(), child.dir()))
        .map_err(|e| err(e.to_string()))?;
    saved.write_record_text(&text)?;
    let _ = fs::remove_dir_all(from);
    Ok(())
}
