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

/// What the host proves itself to the guest with: the project's SSH client
/// key (its public line goes to the guest's authorized keys) and the token
/// the guest's exec agent asks for.
#[derive(Debug, Clone)]
pub struct ClientKeys {
    /// The public key line (`ssh-ed25519 AAAA… vibebox`).
    pub public: String,
    /// The exec agent's token (64 hex digits).
    pub agent_token: String,
}

impl ClientKeys {
    /// The `key TYPE BLOB TOKEN` line of the guest's control channel.
    pub fn key_line(&self) -> String {
        let mut key = self.public.split_whitespace();
        format!(
            "key {} {} {}\n",
            key.next().unwrap_or_default(),
            key.next().unwrap_or_default(),
            self.agent_token
        )
    }
}

/// The exec agent's token file.
pub fn agent_token_path(ssh_dir: &Path) -> PathBuf {
    ssh_dir.join("agent-token")
}

/// The project's exec agent token, if it has a valid one.
pub fn read_agent_token(ssh_dir: &Path) -> Option<String> {
    let t = fs::read_to_string(agent_token_path(ssh_dir)).ok()?;
    let t = t.trim();
    vibebox_agent::proto::valid_token(t.as_bytes()).then(|| t.to_string())
}

/// The project's exec agent token, made (32 random bytes, hex, a file only
/// its owner reads) if missing or damaged.
fn ensure_agent_token(ssh_dir: &Path) -> Result<String, VmError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(t) = read_agent_token(ssh_dir) {
        return Ok(t);
    }
    let path = agent_token_path(ssh_dir);
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| VmError::Setup(format!("cannot read /dev/urandom: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = ssh_dir.join(format!(".agent-token.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| VmError::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(token)
}

/// Creates the project's ed25519 key pair and exec agent token if missing.
pub fn ensure_keypair(ssh_dir: &Path) -> Result<ClientKeys, VmError> {
    fs::create_dir_all(ssh_dir)
        .and_then(|()| fs::set_permissions(ssh_dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| VmError::Setup(format!("cannot create {}: {e}", ssh_dir.display())))?;
    let key = key_path(ssh_dir);
    if !key.exists() {
        keygen(&key)?;
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .map_err(|e| VmError::Setup(format!("cannot protect {}: {e}", key.display())))?;
    let public = key.with_extension("pub");
    let line = fs::read_to_string(&public)
        .map_err(|e| VmError::Setup(format!("cannot read {}: {e}", public.display())))?;
    Ok(ClientKeys {
        public: line.trim().to_string(),
        agent_token: ensure_agent_token(ssh_dir)?,
    })
}

/// Makes an ed25519 key pair at `key` and `key.pub`.
fn keygen(key: &Path) -> Result<(), VmError> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vibebox", "-f"])
        .arg(key)
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
    Ok(())
}

/// A new host key for a guest, made on the host (where it costs
/// milliseconds, not the guest's emulated second) in the private directory
/// `dir` and removed from it: the private key file's bytes and the public
/// key line.
pub fn new_host_key(dir: &Path) -> Result<(Vec<u8>, String), VmError> {
    let key = dir.join(format!("hostkey-{}", std::process::id()));
    let public = key.with_extension("pub");
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(&public);
    let made = keygen(&key).and_then(|()| {
        let read = |p: &Path| {
            fs::read(p).map_err(|e| VmError::Setup(format!("cannot read {}: {e}", p.display())))
        };
        Ok((read(&key)?, read(&public)?))
    });
    let _ = fs::remove_file(&key);
    let _ = fs::remove_file(&public);
    let (private, public) = made?;
    Ok((private, String::from_utf8_lossy(&public).trim().to_string()))
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

/// A path as the value of an `-o` option: ssh splits values at whitespace
/// unless quoted, takes `\` as an escape inside quotes and expands `%`
/// tokens in these keys (a project at `/w/my app 100%` must work).
fn option_path(p: &Path) -> String {
    let s = p.display().to_string();
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

/// The options every vibebox ssh uses: our key, the pinned host key only,
/// connection sharing through `control_path`.
pub fn options(ssh_dir: &Path, port: u16, control_path: &Path) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        // Not `-i`: ssh expands `%` in that path too, unquoted.
        "-o".into(),
        format!("IdentityFile={}", option_path(&key_path(ssh_dir))),
        "-p".into(),
        port.to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!(
            "UserKnownHostsFile={}",
            option_path(&known_hosts_path(ssh_dir))
        ),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("HostKeyAlias={HOST_ALIAS}"),
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}", option_path(control_path)),
        "-o".into(),
        "ControlPersist=300".into(),
        // ECDH over P-256 first: OpenSSL's P-256 takes the guest about a
        // third less time than curve25519 under TCG, where the first
        // connection's key exchange is much of a start (0.29 s against
        // 0.43 s for a new connection here); curve25519 stays allowed.
        "-o".into(),
        "KexAlgorithms=ecdh-sha2-nistp256,curve25519-sha256,curve25519-sha256@libssh.org".into(),
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
        assert!(o.contains(&"UserKnownHostsFile=\"/p/.vibebox/ssh/known_hosts\"".to_string()));
        let o = options(
            Path::new("/w/my \"app\" 100%\\/.vibebox/ssh"),
            1,
            Path::new("/r"),
        );
        assert!(o.contains(
            &"UserKnownHostsFile=\"/w/my \\\"app\\\" 100%%\\\\/.vibebox/ssh/known_hosts\""
                .to_string()
        ));
    }
}
