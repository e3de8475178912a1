//! One virtiofsd per mount. Read-only is enforced by virtiofsd on the host
//! (`--readonly`). Inside a read-write share, the protected paths planned by
//! `vibebox_core::protect` are enforced in virtiofsd's private mount namespace,
//! before virtiofsd starts: hidden paths (the project's `.vibebox/`) are
//! covered by an empty directory, read-only paths (git hooks and config,
//! `vibebox.toml`, agent settings) are bound onto themselves read-only, and
//! pinned paths (`.git`) are bound onto themselves so that they cannot be
//! renamed or removed. The guest's root can do nothing about any of it: these
//! mounts exist only on the host side of the share.

use std::path::{Path, PathBuf};
use std::process::Command;

use vibebox_core::protect::GuardKind;

/// Applies the guards in virtiofsd's private mount namespace, then execs
/// virtiofsd. `$1` is the empty directory, then pairs of (kind, path) until
/// `--`, then virtiofsd's command line. Each path is checked again right
/// before it is bound: it must still be exactly that path with no symlink in
/// it (`realpath -e`), or the share does not start.
const GUARD_SCRIPT: &str = r#"e=$1; shift
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  kind=$1; p=$2; shift 2
  if [ "$(realpath -e -- "$p" 2>/dev/null)" != "$p" ]; then
    echo "vibebox: refusing to share: $p changed (it is gone or became a symlink)" >&2; exit 1
  fi
  case $kind in
    hide) mount --bind -- "$e" "$p" ;;
    pin) mount --bind -- "$p" "$p" ;;
    rw) mount --bind -- "$p" "$p" && mount -o remount,bind,rw -- "$p" ;;
    ro) mount --bind -- "$p" "$p" && mount -o remount,bind,ro -- "$p" ;;
    *) false ;;
  esac || { echo "vibebox: cannot protect $p ($kind)" >&2; exit 1; }
done
shift
exec "$@""#;

/// What one virtiofsd serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The host directory.
    pub shared_dir: PathBuf,
    /// The vhost-user socket virtiofsd listens on.
    pub socket: PathBuf,
    /// Refuse every write (on the host).
    pub readonly: bool,
    /// Protected paths inside `shared_dir`, parents first.
    pub guards: Vec<(GuardKind, PathBuf)>,
    /// The guest user's uid, mapped to the host user's uid.
    pub guest_uid: u32,
}

/// Where virtiofsd is: on PATH, in /usr/libexec, or in vibebox's cache.
pub fn find_virtiofsd(cache_dir: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("virtiofsd"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.push("/usr/lib/qemu/virtiofsd".into());
    candidates.push(cache_dir.join("virtiofsd/bin/virtiofsd"));
    candidates.into_iter().find(|c| c.is_file())
}

/// The command that runs virtiofsd for `spec`.
///
/// It starts as `unshare --mount`, applies the guards in that private
/// namespace ([`GUARD_SCRIPT`]), then execs virtiofsd, which confines itself
/// to the shared directory (`--sandbox namespace`).
pub fn command(virtiofsd: &Path, spec: &ShareSpec, empty_dir: &Path) -> Command {
    let mut c = Command::new("unshare");
    if !rustix::process::getuid().is_root() {
        // An unprivileged user becomes root of a new user namespace, which
        // maps back to that user on the host.
        c.arg("--user").arg("--map-root-user");
    }
    // Seen from virtiofsd, the host user is uid/gid 0 either way (real root,
    // or root of its user namespace): the guest user maps to it.
    let (uid, gid) = (0, 0);
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        GUARD_SCRIPT,
    ]);
    c.arg("vibebox-virtiofsd").arg(empty_dir);
    for (kind, path) in &spec.guards {
        c.arg(kind.as_str()).arg(path);
    }
    c.arg("--");
    c.arg(virtiofsd)
        .arg("--shared-dir")
        .arg(&spec.shared_dir)
        .arg("--socket-path")
        .arg(&spec.socket)
        .args([
            "--sandbox",
            "namespace",
            "--cache",
            "auto",
            "--inode-file-handles=never",
            // A resume must not fail because the host deleted a file the
            // guest held open while it was suspended: only that file fails.
            "--migration-on-error=guest-error",
        ])
        .arg(format!("--translate-uid=map:{}:{uid}:1", spec.guest_uid))
        .arg(format!("--translate-gid=map:{}:{gid}:1", spec.guest_uid))
        .arg(format!("--translate-uid=squash-guest:0:{uid}:1"))
        .arg(format!("--translate-gid=squash-guest:0:{gid}:1"));
    if spec.readonly {
        c.arg("--readonly");
    }
    c
}
