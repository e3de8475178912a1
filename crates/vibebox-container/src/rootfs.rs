//! The image's root tree for the container runtime, unpacked once per image.
//!
//! The image build writes `rootfs.tar` with owners already shifted for the
//! box's nested user namespace (see `bundle::ID_MAP`). It is unpacked by GNU
//! tar as root of the runtime's user namespace, so owners, modes and setuid
//! bits are as the box must see them, into `rootfs/` beside it. Every session
//! of the image shares that tree as its read-only lower layer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use vibebox_core::subids::{remove_tree, SubIds};

/// The tree could not be unpacked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RootfsError(pub String);

/// The unpacked tree of the image in `image_dir`.
pub fn tree(image_dir: &Path) -> PathBuf {
    image_dir.join("rootfs")
}

/// Unpacks `rootfs.tar` of the image in `image_dir` unless that was done;
/// returns the tree. `progress` is told when it has to (a few seconds).
pub fn ensure_unpacked(
    image_dir: &Path,
    ids: &SubIds,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, RootfsError> {
    let target = tree(image_dir);
    // The tree's owners are subordinate ids: it is unpacked again when the
    // user's range changed since.
    let done = image_dir.join("rootfs.done");
    let stamp = format!("{} {}\n", ids.uid, ids.gid);
    let unpacked = || target.is_dir() && fs::read_to_string(&done).is_ok_and(|s| s == stamp);
    if unpacked() {
        return Ok(target);
    }
    let tar = image_dir.join("rootfs.tar");
    if !tar.is_file() {
        return Err(RootfsError(format!(
            "the image in {} has no rootfs.tar (it was built by an earlier vibebox); rebuild it with `vibebox image build`",
            image_dir.display()
        )));
    }
    // One unpacker at a time; a second waits and then finds it done.
    let lock_path = image_dir.join("rootfs.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| RootfsError(format!("cannot open {}: {e}", lock_path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| RootfsError(format!("cannot lock {}: {e}", lock_path.display())))?;
    if unpacked() {
        return Ok(target);
    }
    progress("unpacking the image's root tree for the container runtime (once per image)");
    let tmp = image_dir.join(format!(".rootfs-{}", std::process::id()));
    let clean = |p: &Path| {
        remove_tree(p).map_err(|e| RootfsError(format!("cannot remove {}: {e}", p.display())))
    };
    clean(&tmp)?;
    clean(&target)?;
    fs::create_dir(&tmp)
        .map_err(|e| RootfsError(format!("cannot create {}: {e}", tmp.display())))?;
    let out = Command::new("unshare")
        .args(ids.unshare_args())
        // Device nodes cannot be made in a user namespace; the box's /dev is
        // made by crun.
        .args(["--", "tar", "--numeric-owner", "--exclude=./dev/*", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(&tmp)
        .output()
        .map_err(|e| RootfsError(format!("cannot run unshare and tar: {e}")))?;
    if !out.status.success() {
        let _ = remove_tree(&tmp);
        return Err(RootfsError(format!(
            "cannot unpack {}: {}",
            tar.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _ = fs::remove_file(&done);
    fs::rename(&tmp, &target)
        .map_err(|e| RootfsError(format!("cannot move the tree into place: {e}")))?;
    fs::write(&done, &stamp)
        .map_err(|e| RootfsError(format!("cannot write {}: {e}", done.display())))?;
    Ok(target)
}
