//! Consent for what a project's `vibebox.toml` grants the box.
//!
//! A config can give the box more than its own project directory: host paths
//! mounted (read-only or read-write), a wider network (more allowlist entries,
//! blocklist mode, fewer blocklist entries, resolver overrides, exposed ports),
//! fewer protected paths. The box itself can write `vibebox.toml` between two
//! starts, and a cloned repository brings its own, so nothing it grants beyond
//! the defaults is applied until the person at the host said yes — the same
//! idea as `direnv allow`, `mise trust` or VS Code's workspace trust.
//!
//! [`Grants`] is what one config grants, computed from the config and the
//! mounts as resolved on the host (symlinks followed: the real path is what
//! consent covers). [`widening`] lists what a config grants beyond what was
//! accepted and the defaults. [`TrustStore`] keeps the accepted grants of each
//! session in `$VIBEBOX_HOME/trust/<session-id>.json`: on the host, outside
//! every project tree (and hidden from every share), keyed by the session id,
//! so the record follows a moved project and a copy starts untrusted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;
use crate::mounts::MountMode;
use crate::policy::NetworkMode;
use crate::store::StoreUrl;

/// Everything a config grants the box beyond its own project directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Host paths outside the project (real paths, symlinks resolved) and the
    /// widest mode any mount gives them.
    pub mounts: BTreeMap<PathBuf, MountMode>,
    /// Allowlist, blocklist or ask.
    pub mode: NetworkMode,
    /// The network entries, normalised as `explain` shows them.
    pub entries: BTreeSet<String>,
    /// Resolver overrides.
    pub hosts: BTreeMap<String, IpAddr>,
    /// Exposed ports: (host loopback port, guest port).
    pub expose: BTreeSet<(u16, u16)>,
    /// Extra protected paths (`[box] protect`), resolved on the host.
    pub protect: BTreeSet<PathBuf>,
    /// The store `vibebox save` uploads the project to (`[store]`), when the
    /// config names one (records from before stores had none).
    #[serde(default)]
    pub store: Option<StoreUrl>,
}

impl Grants {
    /// What `config` grants, given its mounts' real host paths (in the order of
    /// `config.mounts`) and its extra protected paths, resolved.
    ///
    /// Mounts whose real path lies inside `project_dir` grant nothing new: the
    /// project is always mounted read-write.
    pub fn of(
        config: &Config,
        mount_hosts: &[PathBuf],
        protect: &[PathBuf],
        project_dir: &Path,
    ) -> Grants {
        let mut mounts: BTreeMap<PathBuf, MountMode> = BTreeMap::new();
        for (m, host) in config.mounts.iter().zip(mount_hosts) {
            if host.starts_with(project_dir) {
                continue;
            }
            let mode = mounts.entry(host.clone()).or_insert(m.spec.mode);
            *mode = (*mode).max(m.spec.mode);
        }
        Grants {
            mounts,
            mode: config.network.mode,
            entries: config
                .network
                .entries
                .iter()
                .map(ToString::to_string)
                .collect(),
            hosts: config.network.hosts.clone(),
            expose: config.network.expose.iter().copied().collect(),
            protect: protect.iter().cloned().collect(),
            store: config.store.clone(),
        }
    }

    /// What the default config grants: nothing here is ever asked about.
    pub fn defaults(host_home: &Path) -> Grants {
        let config = Config::default();
        let hosts: Vec<PathBuf> = config
            .mounts
            .iter()
            .map(|m| {
                let p = crate::mounts::host_path(&m.spec.host, host_home, Path::new("/"));
                std::fs::canonicalize(&p).unwrap_or(p)
            })
            .collect();
        Grants::of(&config, &hosts, &[], Path::new("/nonexistent-project"))
    }

    /// Records `entry` (a network entry as `explain` shows it) as one the
    /// person made reachable (ask mode's "allow always").
    pub fn accept_entry(&mut self, entry: &str) {
        if self.mode.lists_what_is_reachable() {
            self.entries.insert(entry.to_string());
        } else {
            // An accepted blocklist: the entry is no longer one it blocks.
            self.entries.remove(entry);
        }
    }

    /// Every grant, one line each, for `vibebox trust`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (host, mode) in &self.mounts {
            out.push(format!("mount {} ({mode})", host.display()));
        }
        out.push(format!("network mode {}", self.mode));
        for e in &self.entries {
            out.push(match self.mode {
                NetworkMode::Allowlist | NetworkMode::Ask => {
                    format!("network entry {e} (reachable)")
                }
                NetworkMode::Blocklist => format!("network entry {e} (blocked)"),
            });
        }
        for (name, ip) in &self.hosts {
            out.push(format!("hosts override {name} = {ip}"));
        }
        for (h, g) in &self.expose {
            out.push(format!("expose guest port {g} on the host's 127.0.0.1:{h}"));
        }
        for p in &self.protect {
            out.push(format!("protected path {}", p.display()));
        }
        if let Some(s) = &self.store {
            out.push(format!("saves go to {s}"));
        }
        out
    }
}

/// One thing a config grants that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Widening {
    /// A host path mounted, or mounted with a wider mode than accepted.
    Mount {
        /// The real host path.
        host: PathBuf,
        /// Its mode now.
        mode: MountMode,
        /// The accepted mode, if the path was accepted at all.
        was: Option<MountMode>,
    },
    /// Blocklist mode where an allowlist was accepted.
    Blocklist,
    /// A name or address made reachable.
    Entry(String),
    /// A blocklist entry removed: what it blocked becomes reachable.
    Unblocked(String),
    /// A resolver override, new or changed.
    Host {
        /// The name.
        name: String,
        /// The address it resolves to now.
        ip: IpAddr,
    },
    /// A guest port exposed on the host's loopback.
    Expose {
        /// Host loopback port.
        host: u16,
        /// Guest port.
        guest: u16,
    },
    /// An extra protected path that is no longer protected.
    Unprotect(PathBuf),
    /// A store named by the config, new or changed: `vibebox save` uploads
    /// the project there.
    Store(StoreUrl),
}

impl fmt::Display for Widening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Widening::Mount {
                host,
                mode,
                was: None,
            } => write!(f, "+ mount {} ({mode})", host.display()),
            Widening::Mount {
                host,
                mode,
                was: Some(was),
            } => write!(f, "~ mount {}: {was} -> {mode}", host.display()),
            Widening::Blocklist => f.write_str(
                "~ network mode: allowlist -> blocklist (every name and address not listed becomes reachable)",
            ),
            Widening::Entry(e) => write!(f, "+ network entry {e} (becomes reachable)"),
            Widening::Unblocked(e) => {
                write!(f, "- blocklist entry {e} (becomes reachable)")
            }
            Widening::Host { name, ip } => write!(
                f,
                "+ hosts override {name} = {ip} (the box's connections to {name} go to {ip})"
            ),
            Widening::Expose { host, guest } => write!(
                f,
                "+ expose guest port {guest} on the host's 127.0.0.1:{host}"
            ),
            Widening::Unprotect(p) => {
                write!(f, "- protected path {} (the box may write it)", p.display())
            }
            Widening::Store(s) => write!(f, "~ store {s} (`vibebox save` uploads the project there)"),
        }
    }
}

/// What `current` grants beyond `accepted` (or, with no record, beyond the
/// defaults) — never anything the defaults grant. Removing a mount or an
/// allowlist entry, or changing cpu, memory, disk or grace, widens nothing.
///
/// ```
/// use std::path::Path;
/// use vibebox_core::config::Config;
/// use vibebox_core::trust::{widening, Grants};
/// let home = Path::new("/home/me");
/// let c = Config::parse("[network]\nentries = [\"evil.example\"]\n", Path::new("v.toml")).unwrap();
/// let g = Grants::of(&c, &[], &[], Path::new("/p"));
/// let w = widening(&g, None, &Grants::defaults(home));
/// assert_eq!(w.len(), 1);
/// assert!(w[0].to_string().contains("evil.example"));
/// ```
pub fn widening(current: &Grants, accepted: Option<&Grants>, defaults: &Grants) -> Vec<Widening> {
    let acc = accepted.unwrap_or(defaults);
    let mut out = Vec::new();
    for (host, mode) in &current.mounts {
        let was = acc.mounts.get(host).copied();
        let default = defaults.mounts.get(host).copied();
        if was.max(default) >= Some(*mode) {
            continue;
        }
        out.push(Widening::Mount {
            host: host.clone(),
            mode: *mode,
            was,
        });
    }
    // Ask mode grants what an allowlist does: the person answers each other
    // name at the terminal, the box cannot answer for them.
    match (
        acc.mode.lists_what_is_reachable(),
        current.mode.lists_what_is_reachable(),
    ) {
        (true, true) => {
            for e in &current.entries {
                if !acc.entries.contains(e) && !defaults.entries.contains(e) {
                    out.push(Widening::Entry(e.clone()));
                }
            }
        }
        (true, false) => out.push(Widening::Blocklist),
        (false, false) => {
            for e in &acc.entries {
                if !current.entries.contains(e) {
                    out.push(Widening::Unblocked(e.clone()));
                }
            }
        }
        (false, true) => {
            // An allowlist entry that the accepted blocklist blocked.
            for e in &current.entries {
                if acc.entries.contains(e) {
                    out.push(Widening::Entry(e.clone()));
                }
            }
        }
    }
    for (name, ip) in &current.hosts {
        if acc.hosts.get(name) != Some(ip) {
            out.push(Widening::Host {
                name: name.clone(),
                ip: *ip,
            });
        }
    }
    for (h, g) in &current.expose {
        if !acc.expose.contains(&(*h, *g)) {
            out.push(Widening::Expose {
                host: *h,
                guest: *g,
            });
        }
    }
    for p in &acc.protect {
        if !current.protect.contains(p) {
            out.push(Widening::Unprotect(p.clone()));
        }
    }
    if let Some(s) = &current.store {
        if acc.store.as_ref() != Some(s) {
            out.push(Widening::Store(s.clone()));
        }
    }
    out
}

/// Reading or writing a trust record failed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The record exists but cannot be read as one.
    #[error("{} is not a valid trust record: {why}; delete it and run `vibebox trust` again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Record {
    session: Uuid,
    directory: PathBuf,
    accepted: String,
    grants: Grants,
}

/// The accepted grants of every session: `$VIBEBOX_HOME/trust/<id>.json`.
#[derive(Debug, Clone)]
pub struct TrustStore {
    dir: PathBuf,
}

impl TrustStore {
    /// The store under `vibebox_home`.
    pub fn new(vibebox_home: &Path) -> TrustStore {
        TrustStore {
            dir: vibebox_home.join("trust"),
        }
    }

    fn path(&self, session: &Uuid) -> PathBuf {
        self.dir.join(format!("{session}.json"))
    }

    /// The grants accepted for `session`, if any were.
    pub fn accepted(&self, session: &Uuid) -> Result<Option<Grants>, TrustError> {
        let path = self.path(session);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TrustError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let record: Record = serde_json::from_str(&text).map_err(|e| TrustError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if record.session != *session {
            return Err(TrustError::Corrupt {
                path,
                why: format!("it names session {}", record.session),
            });
        }
        Ok(Some(record.grants))
    }

    /// Records `grants` as accepted for `session` (atomically).
    pub fn accept(
        &self,
        session: &Uuid,
        directory: &Path,
        grants: &Grants,
    ) -> Result<(), TrustError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| TrustError::Io {
                action: "create",
                path: self.dir.clone(),
                source,
            })?;
        let record = Record {
            session: *session,
            directory: directory.to_path_buf(),
            accepted: jiff::Timestamp::now().to_string(),
            grants: grants.clone(),
        };
        let text = serde_json::to_string_pretty(&record).map_err(|e| TrustError::Io {
            action: "serialise",
            path: self.path(session),
            source: std::io::Error::other(e),
        })?;
        let path = self.path(session);
        crate::project::write_atomic(&path, text.as_bytes()).map_err(|e| TrustError::Io {
            action: "write",
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Forgets `session` (when it is deleted).
    pub fn forget(&self, session: &Uuid) {
        let _ = std::fs::remove_file(self.path(session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_allowed_always_is_no_widening_afterwards() {
        let d = defaults();
        // With the default allowlist accepted, c.example below is new; the
        // accepted blocklist made it reachable already.
        for (accepted_src, more_widens) in [
            ("", 1),
            (
                "[network]\nmode = \"blocklist\"\nentries = [\"b.example\"]\n",
                0,
            ),
        ] {
            let mut acc = grants(accepted_src, &[]);
            acc.accept_entry("b.example");
            let now = grants(
                "[network]\nmode = \"ask\"\nentries = [\"b.example\"]\n",
                &[],
            );
            assert!(widening(&now, Some(&acc), &d).is_empty(), "{accepted_src}");
            let more = grants(
                "[network]\nmode = \"ask\"\nentries = [\"b.example\", \"c.example\"]\n",
                &[],
            );
            assert_eq!(
                widening(&more, Some(&acc), &d).len(),
                more_widens,
                "{accepted_src}"
            );
        }
    }

    #[test]
    fn ask_mode_grants_what_an_allowlist_grants() {
        let d = defaults();
        let ask = grants("[network]\nmode = \"ask\"\n", &[]);
        assert!(widening(&ask, None, &d).is_empty());
        let acc = grants("[network]\nmode = \"ask\"\n", &[]);
        let block = grants("[network]\nmode = \"blocklist\"\n", &[]);
        assert_eq!(widening(&block, Some(&acc), &d), vec![Widening::Blocklist]);
    }

    fn grants(src: &str, mounts: &[&str]) -> Grants {
        let c = Config::parse(src, Path::new("/p/vibebox.toml")).unwrap();
        let hosts: Vec<PathBuf> = mounts.iter().map(PathBuf::from).collect();
        Grants::of(&c, &hosts, &[], Path::new("/p"))
    }

    fn defaults() -> Grants {
        Grants::defaults(Path::new("/nonexistent-home"))
    }

    fn words(w: &[Widening]) -> Vec<String> {
        w.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_default_config_grants_nothing_new() {
        let g = grants(
            "",
            &["/nonexistent-home/.codex", "/nonexistent-home/.claude"],
        );
        assert!(widening(&g, None, &defaults()).is_empty());
    }

    #[test]
    fn new_mounts_entries_hosts_and_ports_are_widenings() {
        let g = grants(
            "[box]\nmounts = [\"/home/me:/h:read-write\", \"/p/sub:/s\"]\n[network]\nentries = [\"github.com\", \"evil.test\", \"0.0.0.0/0\"]\nhosts = { \"github.com\" = \"127.0.0.1\" }\nexpose = [3000]\n",
            &["/home/me", "/p/sub"],
        );
        let w = words(&widening(&g, None, &defaults()));
        assert_eq!(
            w,
            vec![
                "+ mount /home/me (read-write)",
                "+ network entry 0.0.0.0/0 (becomes reachable)",
                "+ network entry evil.test (becomes reachable)",
                "+ hosts override github.com = 127.0.0.1 (the box's connections to github.com go to 127.0.0.1)",
                "+ expose guest port 3000 on the host's 127.0.0.1:3000",
            ]
        );
        // Once accepted, the same config asks nothing.
        assert!(widening(&g, Some(&g), &defaults()).is_empty());
    }

    #[test]
    fn a_store_named_or_changed_by_the_config_is_a_widening() {
        let none = grants("", &[]);
        let a = grants("[store]\nurl = \"s3://team-saves/a\"\n", &[]);
        let b = grants(
            "[store]\nurl = \"s3://team-saves/a\"\nendpoint = \"http://evil.test:9000\"\n",
            &[],
        );
        assert_eq!(
            words(&widening(&a, None, &defaults())),
            vec!["~ store s3://team-saves/a (`vibebox save` uploads the project there)"]
        );
        assert!(widening(&a, Some(&a), &defaults()).is_empty());
        // The same bucket on another server is another store.
        assert_eq!(widening(&b, Some(&a), &defaults()).len(), 1);
        // Dropping the store (back to the default one) asks nothing.
        assert!(widening(&none, Some(&a), &defaults()).is_empty());
        // A record written before stores existed reads as "no store".
        let mut old = serde_json::to_value(&none).unwrap();
        old.as_object_mut().unwrap().remove("store");
        let old: Grants = serde_json::from_value(old).unwrap();
        assert_eq!(old.store, None);
    }

    #[test]
    fn narrowing_asks_nothing_and_widening_the_mode_does() {
        let wide = grants("[box]\nmounts = [\"/d:/d:read-write\"]\n[network]\nentries = [\"a.test\", \"b.test\"]\n", &["/d"]);
        let narrow = grants("[box]\ncpu_count = 8\nmounts = [\"/d:/d:read-only\"]\n[network]\nentries = [\"a.test\"]\n", &["/d"]);
        assert!(widening(&narrow, Some(&wide), &defaults()).is_empty());
        let w = words(&widening(&wide, Some(&narrow), &defaults()));
        assert_eq!(
            w,
            vec![
                "~ mount /d: read-only -> read-write",
                "+ network entry b.test (becomes reachable)"
            ]
        );
    }

    #[test]
    fn blocklists_widen_by_losing_entries() {
        let allow = grants("", &[]);
        let block = grants(
            "[network]\nmode = \"blocklist\"\nentries = [\"evil.test\", \"bad.test\"]\n",
            &[],
        );
        let fewer = grants(
            "[network]\nmode = \"blocklist\"\nentries = [\"bad.test\"]\n",
            &[],
        );
        assert!(words(&widening(&block, Some(&allow), &defaults()))[0].contains("blocklist"));
        assert_eq!(
            words(&widening(&fewer, Some(&block), &defaults())),
            vec!["- blocklist entry evil.test (becomes reachable)"]
        );
        assert!(widening(&block, Some(&fewer), &defaults()).is_empty());
        let allow_evil = grants("[network]\nentries = [\"evil.test\"]\n", &[]);
        assert_eq!(widening(&allow_evil, Some(&block), &defaults()).len(), 1);
    }

    #[test]
    fn a_changed_hosts_override_is_a_widening() {
        let a = grants("[network]\nhosts = { \"x.test\" = \"192.0.2.1\" }\n", &[]);
        let b = grants("[network]\nhosts = { \"x.test\" = \"127.0.0.1\" }\n", &[]);
        assert_eq!(widening(&b, Some(&a), &defaults()).len(), 1);
        assert!(widening(&a, Some(&a), &defaults()).is_empty());
    }

    #[test]
    fn the_store_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::new(dir.path());
        let id = Uuid::now_v7();
        assert_eq!(store.accepted(&id).unwrap(), None);
        let g = grants("[network]\nentries = [\"x.test\"]\n", &[]);
        store.accept(&id, Path::new("/p"), &g).unwrap();
        assert_eq!(store.accepted(&id).unwrap(), Some(g));
        std::fs::write(store.path(&id), "{").unwrap();
        assert!(matches!(
            store.accepted(&id),
            Err(TrustError::Corrupt { .. })
        ));
        store.forget(&id);
        assert_eq!(store.accepted(&id).unwrap(), None);
    }
}
