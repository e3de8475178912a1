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
    std::fs::rename(&tmp, overlay)
        .map_err(|e| VmError::Setup(format!("cannot create {}: {e}", overlay.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_is_never_smaller_than_the_base() {
        assert_eq!(overlay_size(5, 1 << 20), 5 * GIB);
        assert_eq!(overlay_size(1, 3 * GIB / 2), 2 * GIB);
    }
}
