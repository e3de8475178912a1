//! Subordinate ids (`/etc/subuid`, `/etc/subgid`) and the user namespace the
//! container runtime works in.
//!
//! The container runtime unpacks image trees and runs boxes as root of a user
//! namespace made by util-linux `unshare`: its id 0 is the host user, its ids
//! 1..=65535 are 65535 of the user's subordinate ids (mapped by `newuidmap`).
//! Files in those trees are owned by subordinate ids, which the host user
//! cannot remove directly: [`remove_tree`] does it from inside that namespace.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

/// How many subordinate ids the namespace maps (besides the user's own).
pub const RANGE: u32 = 65535;

/// The first subordinate uid and gid of a range of at least [`RANGE`] ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIds {
    /// First subordinate uid.
    pub uid: u32,
    /// First subordinate gid.
    pub gid: u32,
}

/// The user has no usable subordinate ids.
#[derive(Debug, thiserror::Error)]
#[error("{user} has no range of {RANGE} subordinate {kind}s in {file}")]
pub struct SubIdError {
    /// The user's name.
    pub user: String,
    /// `uid` or `gid`.
    pub kind: &'static str,
    /// The file read.
    pub file: &'static str,
}

impl SubIdError {
    /// What to do about it.
    pub fn help(&self) -> String {
        format!(
            "add one as root, e.g. `usermod --add-subuids 1879048192-1879113727 --add-subgids 1879048192-1879113727 {}` (scripts/install-deps does it)",
            self.user
        )
    }
}

/// The first id of an entry of `name` or `id` with at least [`RANGE`] ids.
fn parse_range(text: &str, name: &str, id: u32) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let (start, count): (u32, u32) = (start.parse().ok()?, count.parse().ok()?);
        ((who == name || who.parse::<u32>().ok() == Some(id)) && count >= RANGE).then_some(start)
    })
}

/// The name of the user with `uid`, from /etc/passwd (its number when absent).
pub fn user_name(uid: u32) -> String {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let _ = f.next()?;
                (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

impl SubIds {
    /// The current user's subordinate ids.
    pub fn of_current_user() -> Result<SubIds, SubIdError> {
        let uid = rustix::process::getuid().as_raw();
        let user = user_name(uid);
        let read = |file: &'static str, kind: &'static str| {
            fs::read_to_string(file)
                .ok()
                .and_then(|t| parse_range(&t, &user, uid))
                .ok_or_else(|| SubIdError {
                    user: user.clone(),
                    kind,
                    file,
                })
        };
        Ok(SubIds {
            uid: read("/etc/subuid", "uid")?,
            gid: read("/etc/subgid", "gid")?,
        })
    }

    /// `unshare` arguments for a new user namespace in which the host user is
    /// root and ids 1..=65535 are the subordinate ids.
    pub fn unshare_args(&self) -> Vec<String> {
        vec![
            "--user".into(),
            "--map-root-user".into(),
            format!("--map-users={},1,{RANGE}", self.uid),
            format!("--map-groups={},1,{RANGE}", self.gid),
        ]
    }
}

/// Removes a directory tree, also one whose files are owned by the user's
/// subordinate ids (an unpacked image, a container's upper layer): when the
/// user cannot remove it directly, it is removed from inside the namespace
/// where those ids are the user's.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
        Err(_) => {}
    }
    let ids = SubIds::of_current_user()
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
    let out = Command::new("unshare")
        .args(ids.unshare_args())
        .args(["--", "rm", "-rf", "--one-file-system", "--"])
        .arg(path)
        .output()?;
    if out.status.success() && !path.exists() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot remove {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_number_and_must_be_long_enough() {
        let t = "alice:100000:65536\nbob:200000:1000\n1003:300000:65536\n";
        assert_eq!(parse_range(t, "alice", 1001), Some(100000));
        assert_eq!(parse_range(t, "bob", 1002), None, "too short");
        assert_eq!(parse_range(t, "carol", 1003), Some(300000));
        assert_eq!(parse_range(t, "dave", 1004), None);
        assert_eq!(parse_range("garbage\n:::\n", "x", 1), None);
    }

    #[test]
    fn the_namespace_maps_the_user_to_root_and_the_range_after_it() {
        let ids = SubIds {
            uid: 100000,
            gid: 200000,
        };
        assert_eq!(
            ids.unshare_args(),
            [
                "--user",
                "--map-root-user",
                "--map-users=100000,1,65535",
                "--map-groups=200000,1,65535"
            ]
        );
    }
}
