//! The run directory: where a session's sockets live (unix socket paths are
//! limited to 108 bytes; project paths are not).

use std::fs;
use std::path::PathBuf;

use crate::error::{Because, SupervisorError};

/// A short private directory for the helpers' sockets (unix socket paths are
/// limited to 108 bytes, project paths are not): `$XDG_RUNTIME_DIR/vibebox`
/// when set, else `/tmp/vibebox-<uid>`, created 0700 and verified to be a
/// real directory this user owns that nobody else can write — never one
/// another user made.
pub fn run_root() -> Result<PathBuf, SupervisorError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = rustix::process::getuid().as_raw();
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let root = match &xdg {
        Some(x) => x.join("vibebox"),
        None => std::env::temp_dir().join(format!("vibebox-{uid}")),
    };
    match fs::DirBuilder::new().mode(0o700).create(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(SupervisorError::new(format!(
                "cannot create {}: {e}",
                root.display()
            )))
        }
    }
    let meta = fs::symlink_metadata(&root).because(|| format!("cannot read {}", root.display()))?;
    let problem = if meta.file_type().is_symlink() || !meta.is_dir() {
        Some("is not a directory (a symlink or a file)")
    } else if meta.uid() != uid {
        Some("belongs to another user")
    } else if meta.mode() & 0o022 != 0 {
        // Others could have put something in it: do not use it.
        Some("can be written by other users")
    } else {
        if meta.mode() & 0o077 != 0 {
            // Ours and readable by others (earlier versions of vibebox made
            // it 0755): nobody else could write in it, so it is safe to close.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                .because(|| format!("cannot make {} private", root.display()))?;
        }
        None
    };
    if let Some(problem) = problem {
        return Err(SupervisorError::hinted(
            format!(
                "the run directory {} {problem}; vibebox will not put its sockets there",
                root.display()
            ),
            match xdg {
                Some(_) => "check XDG_RUNTIME_DIR (it must be yours, mode 0700)".to_string(),
                None => format!(
                    "remove {} if it is not yours, or set XDG_RUNTIME_DIR to a private directory",
                    root.display()
                ),
            },
        ));
    }
    Ok(root)
}

/// The run directory of `session` (see [`run_root`]).
pub fn run_dir(session: &uuid::Uuid) -> Result<PathBuf, SupervisorError> {
    Ok(run_root()?.join(session.simple().to_string()))
}
