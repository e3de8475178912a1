//! One virtiofsd per mount. Read-only is enforced by virtiofsd on the host
//! (`--readonly`), and the project's `.vibebox/` is covered by an empty
//! directory in virtiofsd's private mount namespace, so the guest never sees
//! keys, disks or logs, whatever it does as root.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one virtiofsd serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The host directory.
    pub shared_dir: PathBuf,
    /// The vhost-user socket virtiofsd listens on.
    pub socket: PathBuf,
    /// Refuse every write (on the host).
    pub readonly: bool,
    /// Directories inside `shared_dir` to hide (covered by `empty_dir`).
    pub hide: Vec<PathBuf>,
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
/// It starts as `unshare --mount`, bind-mounts `empty_dir` over each hidden
/// directory in that private namespace, then execs virtiofsd, which confines
/// itself to the shared directory (`--sandbox namespace`).
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
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
    // $1 = empty dir, $2 = number of hidden dirs, then the dirs, then virtiofsd's argv.
    c.arg(
        "e=$1; n=$2; shift 2; while [ \"$n\" -gt 0 ]; do mount --bind \"$e\" \"$1\" || exit 1; shift; n=$((n-1)); done; exec \"$@\"",
    );
    c.arg("vibebox-virtiofsd")
        .arg(empty_dir)
        .arg(spec.hide.len().to_string());
    c.args(&spec.hide);
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
