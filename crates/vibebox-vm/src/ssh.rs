//! SSH: the per-project key pair, the pinned guest host key, and the client's
//! arguments. No trust-on-first-use: the guest's host key arrives over the
//! private control port at boot and is pinned before any SSH connection.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::VmError;

/// The host name the pinned key is recorded under.
pub const HOST_ALIAS: &str = "vibebox-guest";

/// The private key file.
pub fn key_path(ssh_dir: &Path) -> PathBuf {
    ssh_dir.join("id_ed25519")
}

/// The pinned host key file.
pub fn known_hosts_path(ssh_dir: &Path) -> PathBuf {
    ssh_dir.join("known_hosts")
}

/// Creates the project's ed25519 key pair if missing; returns the public key line.
pub fn ensure_keypair(ssh_dir: &Path) -> Result<String, VmError> {
    fs::create_dir_all(ssh_dir)
        .and_then(|()| fs::set_permissions(ssh_dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| VmError::Setup(format!("cannot create {}: {e}", ssh_dir.display())))?;
    let key = key_path(ssh_dir);
    if !key.exists() {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "vibebox", "-f"])
            .arg(&key)
            .output()
            .map_err(|e| {
                VmError::Setup(format!(
                    "cannot run ssh-keygen ({e}); install openssh-client"
                ))
            })?;
        if !out.status.success() {
            return Err(VmError::Setup(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .map_err(|e| VmError::Setup(format!("cannot protect {}: {e}", key.display())))?;
    let public = key.with_extension("pub");
    let line = fs::read_to_string(&public)
        .map_err(|e| VmError::Setup(format!("cannot read {}: {e}", public.display())))?;
    Ok(line.trim().to_string())
}

/// Checks a host key line (`ssh-ed25519 AAAA...`) from the guest.
pub fn parse_host_key(line: &str) -> Option<(String, String)> {
    let mut parts = line.split_whitespace();
    let kind = parts.next()?;
    let blob = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let valid_kind = kind == "ssh-ed25519";
    let valid_blob = !blob.is_empty()
        && blob.len() < 200
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (valid_kind && valid_blob).then(|| (kind.to_string(), blob.to_string()))
}

/// Pins the guest's host key in `known_hosts` (mode 0600).
pub fn pin_host_key(ssh_dir: &Path, kind: &str, blob: &str) -> Result<(), VmError> {
    let path = known_hosts_path(ssh_dir);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{HOST_ALIAS} {kind} {blob}\n"))
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)))
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| VmError::Setup(format!("cannot write {}: {e}", path.display())))
}

/// The options every vibebox ssh uses: our key, the pinned host key only,
/// connection sharing through `control_path`.
pub fn options(ssh_dir: &Path, port: u16, control_path: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        key_path(ssh_dir).display().to_string(),
        "-p".into(),
        port.to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts_path(ssh_dir).display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("HostKeyAlias={HOST_ALIAS}"),
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}", control_path.display()),
        "-o".into(),
        "ControlPersist=300".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "ConnectTimeout=30".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_are_checked() {
        assert!(parse_host_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc").is_some());
        assert!(parse_host_key("ssh-rsa AAAA").is_none());
        assert!(parse_host_key("ssh-ed25519").is_none());
        // A guest cannot smuggle a second known_hosts line.
        assert!(parse_host_key("ssh-ed25519 AAA\nevil.example ssh-ed25519 BBB").is_none());
        assert!(parse_host_key("ssh-ed25519 AAA extra").is_none());
        assert!(parse_host_key("ssh-ed25519 AA;rm").is_none());
    }

    #[test]
    fn options_never_disable_host_key_checking() {
        let o = options(Path::new("/p/.vibebox/ssh"), 2222, Path::new("/run/cm"));
        assert!(o.contains(&"StrictHostKeyChecking=yes".to_string()));
        assert!(!o.iter().any(|x| x.contains("StrictHostKeyChecking=no")));
        assert!(o.contains(&"UserKnownHostsFile=/p/.vibebox/ssh/known_hosts".to_string()));
    }
}
