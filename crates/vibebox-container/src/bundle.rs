//! The OCI bundle's `config.json`: what crun makes of a session plan.
//!
//! The box gets its own user, mount, pid, uts, ipc, network and cgroup
//! namespaces. Its user namespace is nested in the one the runtime works in
//! (id 0 there is the host user, ids 1..=65535 the user's subordinate ids):
//! box id 1000 (`vibecoder`) is the host user, so files in the shares keep
//! their owner; every other box id n is n + 1 there, so the box's root is a
//! subordinate id with no power on the host. The box's capabilities leave out
//! `CAP_SYS_ADMIN` (no mount, remount or unmount: a read-only share stays
//! read-only for the box's root) and the seccomp profile refuses the mount
//! calls, new namespaces, kernel keyrings, BPF, module loading and the like.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vibebox_core::mounts::MountMode;
use vibebox_core::plan::PlannedShare;
use vibebox_core::protect::GuardKind;

/// Box ids as `(box id, id in the runtime's namespace, count)`.
pub const ID_MAP: [(u32, u32, u32); 3] = [(0, 1, 1000), (1000, 0, 1), (1001, 1002, 64534)];

/// The id a box id has in the runtime's namespace (as the image's
/// `rootfs.tar` is written), if it is mapped.
pub fn outer_id(box_id: u32) -> Option<u32> {
    ID_MAP
        .iter()
        .find(|(inner, _, n)| (*inner..inner + n).contains(&box_id))
        .map(|(inner, outer, _)| outer + (box_id - inner))
}

/// The capabilities the box's root has (Docker's default set, plus
/// `CAP_NET_ADMIN` for its own network namespace; no `CAP_SYS_ADMIN`).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
];

/// System calls the box may not make (`EPERM`), whatever its capabilities.
pub const DENIED_SYSCALLS: &[&str] = &[
    // Mounts: a read-only share stays read-only, a hidden path hidden.
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    // New namespaces (a nested user namespace would give the box's root
    // CAP_SYS_ADMIN over a mount namespace of its own).
    "unshare",
    "setns",
    // Kernel state that is not namespaced.
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "acct",
    "swapon",
    "swapoff",
    "reboot",
    "quotactl",
    "quotactl_fd",
    "iopl",
    "ioperm",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "vhangup",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
];

/// `clone` flags that make a namespace (refused like `unshare`).
const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// Everything the config is made from.
#[derive(Debug, Clone)]
pub struct BundleSpec<'a> {
    /// The box's root (the overlay, mounted by the runtime).
    pub rootfs: &'a Path,
    /// The shares with their guards.
    pub shares: &'a [PlannedShare],
    /// An empty directory and an empty file (hidden paths are covered with
    /// them).
    pub empty_dir: &'a Path,
    /// See `empty_dir`.
    pub empty_file: &'a Path,
}

/// One bind mount.
fn bind(source: &Path, destination: &str, read_only: bool) -> Value {
    let mut options = vec!["bind", "nosuid", "nodev"];
    options.push(if read_only { "ro" } else { "rw" });
    json!({
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": options,
    })
}

/// Where a guard's host path is in the box.
fn guest_path_of(share: &PlannedShare, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(&share.host).ok()?;
    let mut out = share.guest.trim_end_matches('/').to_string();
    for c in rel.components() {
        out.push('/');
        out.push_str(&c.as_os_str().to_string_lossy());
    }
    Some(out)
}

/// The mounts of the shares and of their guards, in order (each share, then
/// its guards, parents first).
pub fn share_mounts(spec: &BundleSpec<'_>) -> Vec<Value> {
    let mut out = Vec::new();
    for share in spec.shares {
        let share_ro = share.mode == MountMode::ReadOnly;
        out.push(bind(&share.host, &share.guest, share_ro));
        for g in &share.guards {
            let Some(dest) = guest_path_of(share, &g.path) else {
                continue;
            };
            out.push(match g.kind {
                GuardKind::Hide => {
                    let cover = if g.path.is_dir() {
                        spec.empty_dir
                    } else {
                        spec.empty_file
                    };
                    bind(cover, &dest, true)
                }
                GuardKind::ReadOnly => bind(&g.path, &dest, true),
                GuardKind::Pin | GuardKind::Writable => bind(&g.path, &dest, false),
            });
        }
    }
    out
}

/// The host paths the guards bind, with what each must still be when the
/// box starts (the stage checks them again: no symlink crept in).
pub fn guarded_paths(shares: &[PlannedShare]) -> Vec<PathBuf> {
    shares
        .iter()
        .flat_map(|s| {
            std::iter::once(s.host.clone()).chain(s.guards.iter().map(|g| g.path.clone()))
        })
        .collect()
}

/// The seccomp profile.
pub fn seccomp() -> Value {
    let mut syscalls = vec![json!({
        "names": DENIED_SYSCALLS,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 1,
    })];
    for flag in NAMESPACE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{ "index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ" }],
        }));
    }
    // clone3 passes its flags in memory, where seccomp cannot look: glibc
    // falls back to clone when it is missing.
    syscalls.push(json!({
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 38,
    }));
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    })
}

/// The whole `config.json`.
pub fn config(spec: &BundleSpec<'_>) -> Value {
    let ids: Vec<Value> = ID_MAP
        .iter()
        .map(|(c, h, n)| json!({ "containerID": c, "hostID": h, "size": n }))
        .collect();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    mounts.extend(share_mounts(spec));
    let caps = CAPABILITIES;
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/sbin/vibebox-init"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "VIBEBOX_RUNTIME=container",
                "container=vibebox",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            // sudo in the box needs its setuid bit.
            "noNewPrivileges": false,
        },
        "root": { "path": spec.rootfs, "readonly": false },
        "hostname": "vibebox",
        "mounts": mounts,
        "linux": {
            "uidMappings": ids,
            "gidMappings": ids,
            "namespaces": [
                {"type": "user"}, {"type": "mount"}, {"type": "pid"}, {"type": "uts"},
                {"type": "ipc"}, {"type": "network"}, {"type": "cgroup"},
            ],
            "seccomp": seccomp(),
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vibebox_core::protect::Guard;

    fn share(host: &str, guest: &str, mode: MountMode, guards: Vec<Guard>) -> PlannedShare {
        PlannedShare {
            host: host.into(),
            guest: guest.into(),
            mode,
            guards,
        }
    }

    #[test]
    fn box_ids_map_vibecoder_to_the_user_and_the_rest_past_it() {
        assert_eq!(outer_id(0), Some(1));
        assert_eq!(outer_id(999), Some(1000));
        assert_eq!(outer_id(1000), Some(0));
        assert_eq!(outer_id(1001), Some(1002));
        assert_eq!(outer_id(65534), Some(65535));
        assert_eq!(outer_id(65535), None);
        // Every outer id is used at most once, and all lie in the namespace.
        let mut seen = std::collections::HashSet::new();
        for id in 0..65535 {
            let o = outer_id(id).unwrap();
            assert!(o <= vibebox_core::subids::RANGE);
            assert!(seen.insert(o), "{id} -> {o} twice");
        }
    }

    #[test]
    fn shares_and_guards_become_binds_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("proj/.vibebox")).unwrap();
        std::fs::write(p.join("proj/vibebox.toml"), "").unwrap();
        let proj = p.join("proj");
        let shares = vec![
            share(
                proj.to_str().unwrap(),
                "/home/vibecoder/proj",
                MountMode::ReadWrite,
                vec![
                    Guard {
                        path: proj.join(".vibebox"),
                        kind: GuardKind::Hide,
                        why: String::new(),
                    },
                    Guard {
                        path: proj.join("vibebox.toml"),
                        kind: GuardKind::ReadOnly,
                        why: String::new(),
                    },
                ],
            ),
            share("/data", "/data", MountMode::ReadOnly, vec![]),
        ];
        let spec = BundleSpec {
            rootfs: Path::new("/r"),
            shares: &shares,
            empty_dir: Path::new("/e"),
            empty_file: Path::new("/f"),
        };
        let m = share_mounts(&spec);
        let view: Vec<(String, String, bool)> = m
            .iter()
            .map(|v| {
                (
                    v["source"].as_str().unwrap().to_string(),
                    v["destination"].as_str().unwrap().to_string(),
                    v["options"].as_array().unwrap().contains(&json!("ro")),
                )
            })
            .collect();
        let proj_s = proj.display().to_string();
        assert_eq!(
            view,
            vec![
                (proj_s.clone(), "/home/vibecoder/proj".into(), false),
                ("/e".into(), "/home/vibecoder/proj/.vibebox".into(), true),
                (
                    format!("{proj_s}/vibebox.toml"),
                    "/home/vibecoder/proj/vibebox.toml".into(),
                    true
                ),
                ("/data".into(), "/data".into(), true),
            ]
        );
        for v in &m {
            let o = v["options"].as_array().unwrap();
            assert!(o.contains(&json!("nosuid")) && o.contains(&json!("nodev")));
        }
    }

    #[test]
    fn the_box_root_cannot_mount_or_make_namespaces() {
        let c = config(&BundleSpec {
            rootfs: Path::new("/r"),
            shares: &[],
            empty_dir: Path::new("/e"),
            empty_file: Path::new("/f"),
        });
        let caps = c["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.contains(&json!("CAP_SYS_ADMIN")));
        assert!(!caps.contains(&json!("CAP_SYS_PTRACE")));
        assert!(!caps.contains(&json!("CAP_SYS_MODULE")));
        let denied = &c["linux"]["seccomp"]["syscalls"][0]["names"];
        for s in ["mount", "umount2", "unshare", "setns", "keyctl", "bpf"] {
            assert!(denied.as_array().unwrap().contains(&json!(s)), "{s}");
        }
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            ns,
            ["user", "mount", "pid", "uts", "ipc", "network", "cgroup"]
        );
        assert_eq!(c["linux"]["uidMappings"][1]["containerID"], json!(1000));
        assert_eq!(c["linux"]["uidMappings"][1]["hostID"], json!(0));
    }
}
