//! Instance disks: a qcow2 copy-on-write overlay on the base image.

use std::path::Path;
use std::process::Command;

use crate::VmError;

const GIB: u64 = 1 << 30;

/// The size of the overlay: `disk_gb`, but never smaller than the base image.
pub fn overlay_size(disk_gb: u32, base_len: u64) -> u64 {
    (u64::from(disk_gb) * GIB).max(base_len.div_ceil(GIB) * GIB)
}

/// Creates `overlay` over `base` (raw) if it does not exist yet.
///
/// Returns whether it was created. The backing file name recorded in the
/// header is informational only: QEMU is always given the chain explicitly.
pub fn ensure_overlay(base: &Path, overlay: &Path, disk_gb: u32) -> Result<bool, VmError> {
    if overlay.exists() {
        return Ok(false);
    }
    let base_len = std::fs::metadata(base)
        .map_err(|e| VmError::Setup(format!("cannot read the base disk {}: {e}", base.display())))?
        .len();
    let size = overlay_size(disk_gb, base_len);
    let tmp = overlay.with_extension("qcow2.tmp");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(&tmp)
        .arg(size.to_string())
        .output()
        .map_err(|e| VmError::Setup(format!("cannot run qemu-img ({e}); install qemu-utils")))?;
    if !out.status.success() {
        return Err(VmError::Setup(format!(
            "qemu-img could not create the instance disk: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| VmError::Setup(format!("cannot protect {}: {e}", tmp.display())))?;
    }
    std::fs::rename(&tmp, overlay)
        .map_err(|e| VmError::Setup(format!("cannot create {}: {e}", overlay.display())))?;
    Ok(true)
}

/// qcow2 incompatible feature bits QEMU may meet in an overlay vibebox made:
/// dirty (0), compression type (3), extended L2 entries (4). Bit 1 (corrupt),
/// bit 2 (external data file: QEMU would open and write a host file named in
/// the header) and every unknown bit are refused.
const ALLOWED_INCOMPATIBLE: u64 = (1 << 0) | (1 << 3) | (1 << 4);

/// Checks the instance disk before QEMU opens it: a regular file (never
/// through a symlink) holding a qcow2 header of version 2 or 3 that names no
/// external data file and no feature vibebox does not know. The disk is in
/// the project tree, so a repository could ship a crafted one.
pub fn check_overlay(path: &Path) -> Result<(), VmError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: &str| {
        VmError::Setup(format!(
            "the instance disk {} cannot be used: {why}; delete it (vibebox delete, or `:new` in the box) to start afresh",
            path.display()
        ))
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| bad(&format!("cannot open it without following symlinks ({e})")))?;
    let meta = f.metadata().map_err(|e| bad(&e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("it is not a regular file"));
    }
    let mut header = [0u8; 104];
    f.read_exact(&mut header[..72])
        .map_err(|_| bad("it is too short to be a qcow2 image"))?;
    if &header[..4] != b"QFI\xfb" {
        return Err(bad("it is not a qcow2 image"));
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    match be32(4) {
        2 => Ok(()),
        3 => {
            f.read_exact(&mut header[72..80])
                .map_err(|_| bad("its qcow2 v3 header is cut short"))?;
            let incompatible = u64::from_be_bytes(header[72..80].try_into().unwrap_or([0xff; 8]));
            if incompatible & (1 << 2) != 0 {
                Err(bad(
                    "its header names an external data file (a host file QEMU would write)",
                ))
            } else if incompatible & !ALLOWED_INCOMPATIBLE != 0 {
                Err(bad(&format!(
                    "its header has incompatible features {incompatible:#x} that vibebox never makes"
                )))
            } else {
                Ok(())
            }
        }
        v => Err(bad(&format!("qcow2 version {v} is not 2 or 3"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(version: u32, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 112];
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn overlays_with_external_data_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.qcow2");
        std::fs::write(&p, qcow2(3, 0)).unwrap();
        check_overlay(&p).unwrap();
        std::fs::write(&p, qcow2(3, 1)).unwrap();
        check_overlay(&p).unwrap();
        std::fs::write(&p, qcow2(3, 1 << 2)).unwrap();
        let e = check_overlay(&p).unwrap_err().to_string();
        assert!(e.contains("external data file"), "{e}");
        std::fs::write(&p, qcow2(3, 1 << 9)).unwrap();
        assert!(check_overlay(&p).is_err());
        std::fs::write(&p, qcow2(4, 0)).unwrap();
        assert!(check_overlay(&p).is_err());
        std::fs::write(
            &p,
            b"not qcow2 at all, but long enough to hold a header of 72 bytes.............",
        )
        .unwrap();
        assert!(check_overlay(&p).is_err());
        let link = dir.path().join("link.qcow2");
        std::fs::write(&p, qcow2(3, 0)).unwrap();
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(check_overlay(&link).is_err());
    }

    #[test]
    fn a_real_overlay_passes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let overlay = dir.path().join("disk.qcow2");
        match ensure_overlay(&base, &overlay, 1) {
            Ok(created) => {
                use std::os::unix::fs::PermissionsExt;
                assert!(created);
                check_overlay(&overlay).unwrap();
                let mode = std::fs::metadata(&overlay).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("{e}"),
            Err(e) => eprintln!("skipped (no qemu-img here): {e}"),
        }
    }

    #[test]
    fn overlay_is_never_smaller_than_the_base() {
        assert_eq!(overlay_size(5, 1 << 20), 5 * GIB);
        assert_eq!(overlay_size(1, 3 * GIB / 2), 2 * GIB);
    }
}
