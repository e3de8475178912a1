//! `vibebox.toml`: the schema, its defaults and its validation.
//!
//! Parsing keeps the position of every key so that each problem is reported
//! with the file, line, column and key, and what is allowed there. Parsing
//! never changes anything on disk.
//!
//! Files written for the macOS vibebox (`[box] cpu_count, ram_mb, disk_gb,
//! mounts`, `[supervisor] auto_shutdown_ms`) are accepted unchanged.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use toml_edit::{Document, Item, Table, Value};

use crate::diagnostic::{nearest, FileProblem, FileProblems, Location};
use crate::mounts::{self, MountSpec};
use crate::policy::{NetworkEntry, NetworkMode};
use crate::store::{StoreUrl, ENDPOINT_RULE, STORE_URL_RULE};

/// The file name of a project's config.
pub const CONFIG_FILE: &str = "vibebox.toml";

/// The config `vibebox init` writes: the documented defaults, with comments.
pub const DEFAULT_CONFIG: &str = r#"# vibebox.toml: the sandbox of this project. Commit this file.
# Every key is optional; a missing key takes the value shown here.

[box]
# Virtual CPUs and memory (MiB) of the machine.
cpu_count = 2
ram_mb = 2048
# Size of the instance disk (GiB), applied when the disk is created.
disk_gb = 5
# Host paths shown in the box, "host:guest[:read-only|read-write]" (read-write when omitted).
# `~` is your home on the host and /home/vibecoder in the box; a relative host path is
# relative to this directory, a relative guest path is under /home/vibecoder.
# The project itself is always mounted read-write at ~/<project-name>.
mounts = ["~/.codex:~/.codex:read-write", "~/.claude:~/.claude:read-write"]
# runtime = "auto"          # auto | vm | container
# image = "debian-bookworm"
# More paths the box may read but never write, besides the built-in ones (git hooks and
# config, this file, agent settings): relative to this directory, ~/..., or absolute.
# protect = ["secrets/"]

[supervisor]
# Stop the machine this long after the last terminal leaves; its disk stays.
auto_shutdown_ms = 20000
# suspend: save it with its processes (the next start resumes them); shutdown: power off.
# on_idle = "suspend"
# Save the project to the store (see [store]) before the box stops or suspends.
# save_on_idle = false

[network]
# allowlist: only the entries are reachable; blocklist: everything but the entries;
# ask: the entries, and a lookup of any other name asks you at an attached terminal.
mode = "allowlist"
# Domain names (github.com), leading wildcards (*.npmjs.org), optional ports
# (example.com:443), IP addresses and CIDR blocks (10.0.0.0/8).
entries = ["github.com", "*.githubusercontent.com", "registry.npmjs.org", "api.anthropic.com"]
# Ports a server in the box listens on (0.0.0.0) are forwarded to the same port on the host's
# 127.0.0.1 when it is free (else another; `vibebox ports` lists them). false turns it off.
# auto_expose = true

# [store]
# Where `vibebox save` puts the project's saves (git bundles): a directory, or S3.
# url = "s3://bucket/prefix"      # or "file:///path"; default ~/.vibebox/store/
# endpoint = "http://127.0.0.1:8333"   # for S3-compatible servers; credentials from AWS_* / ~/.aws
"#;

pub use crate::image::DEFAULT_IMAGE;
use crate::image::{ImageName, IMAGE_NAME_RULE};

const DEFAULT_ENTRIES: &[&str] = &[
    "github.com",
    "*.githubusercontent.com",
    "registry.npmjs.org",
    "api.anthropic.com",
];

const TOP_KEYS: &[&str] = &["box", "supervisor", "network", "store"];
const STORE_KEYS: &[&str] = &["url", "endpoint"];
const BOX_KEYS: &[&str] = &[
    "cpu_count",
    "ram_mb",
    "disk_gb",
    "mounts",
    "runtime",
    "image",
    "protect",
];
const SUPERVISOR_KEYS: &[&str] = &["auto_shutdown_ms", "on_idle", "save_on_idle"];

/// What the supervisor does when nobody held the session for its grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnIdle {
    /// Save memory and devices; the next start resumes with processes running.
    Suspend,
    /// Power the guest off; the next start boots.
    Shutdown,
}

impl OnIdle {
    /// The words allowed in `vibebox.toml`.
    pub const ALLOWED: &'static [&'static str] = &["suspend", "shutdown"];
}

impl FromStr for OnIdle {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "suspend" => Ok(OnIdle::Suspend),
            "shutdown" => Ok(OnIdle::Shutdown),
            _ => Err(()),
        }
    }
}
const NETWORK_KEYS: &[&str] = &[
    "mode",
    "entries",
    "hosts",
    "expose",
    "auto_expose",
    "max_connections",
];

/// The default cap on a session's concurrent network connections.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;

/// Which runtime turns the session into a running machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// The VM when KVM or TCG can run it, else the container runtime.
    Auto,
    /// Always the QEMU micro-VM.
    Vm,
    /// Always the rootless container runtime.
    Container,
}

impl RuntimeChoice {
    /// The words allowed in `vibebox.toml`.
    pub const ALLOWED: &'static [&'static str] = &["auto", "vm", "container"];

    /// The spelling used in `vibebox.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeChoice::Auto => "auto",
            RuntimeChoice::Vm => "vm",
            RuntimeChoice::Container => "container",
        }
    }
}

impl FromStr for RuntimeChoice {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(RuntimeChoice::Auto),
            "vm" => Ok(RuntimeChoice::Vm),
            "container" => Ok(RuntimeChoice::Container),
            _ => Err(()),
        }
    }
}

impl fmt::Display for RuntimeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `box.mounts` entry and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The parsed entry.
    pub spec: MountSpec,
    /// Its position in the file, when it came from a file.
    pub location: Option<Location>,
}

/// The `[network]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfig {
    /// Allowlist, blocklist or ask.
    pub mode: NetworkMode,
    /// The entries, parsed.
    pub entries: Vec<NetworkEntry>,
    /// Resolver overrides: name (normalised) → address, like `--add-host`.
    pub hosts: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// Guest ports reachable from the host's loopback: (host port, guest port).
    pub expose: Vec<(u16, u16)>,
    /// Forward the TCP ports the box listens on to the host's loopback.
    pub auto_expose: bool,
    /// The most connections open at once (beyond it: a reset).
    pub max_connections: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::Allowlist,
            entries: DEFAULT_ENTRIES
                .iter()
                .filter_map(|e| NetworkEntry::parse(e).ok())
                .collect(),
            hosts: Default::default(),
            expose: Vec::new(),
            auto_expose: true,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A validated `vibebox.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Virtual CPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    pub ram_mb: u32,
    /// Instance disk size in GiB.
    pub disk_gb: u32,
    /// Extra mounts, in file order.
    pub mounts: Vec<MountEntry>,
    /// Which runtime to use.
    pub runtime: RuntimeChoice,
    /// Base image name.
    pub image: ImageName,
    /// Grace period after the last client leaves, in milliseconds.
    pub auto_shutdown_ms: u64,
    /// What happens when the grace period is over.
    pub on_idle: OnIdle,
    /// Egress policy.
    pub network: NetworkConfig,
    /// More paths the box may read but never write (`[box] protect`), as written.
    pub protect: Vec<String>,
    /// Save the workspace to the store before the box stops or suspends.
    pub save_on_idle: bool,
    /// Where saves go (`[store]`); none means the default store.
    pub store: Option<StoreUrl>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cpu_count: 2,
            ram_mb: 2048,
            disk_gb: 5,
            mounts: [
                "~/.codex:~/.codex:read-write",
                "~/.claude:~/.claude:read-write",
            ]
            .iter()
            .filter_map(|m| MountSpec::parse(m).ok())
            .map(|spec| MountEntry {
                spec,
                location: None,
            })
            .collect(),
            runtime: RuntimeChoice::Auto,
            image: ImageName::default(),
            auto_shutdown_ms: 20_000,
            on_idle: OnIdle::Suspend,
            network: NetworkConfig::default(),
            protect: Vec::new(),
            save_on_idle: false,
            store: None,
        }
    }
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}

/// One string of an array: its index, its text and its span.
type StringItem<'t> = (usize, &'t str, Option<Range<usize>>);

/// Collects problems while walking one document.
struct Checker<'a> {
    file: &'a Path,
    src: &'a str,
    problems: Vec<FileProblem>,
}

impl Checker<'_> {
    fn problem(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.problems.push(
            FileProblem::at(self.file, self.src, span, Some(key.to_string()), message)
                .with_help(help),
        );
    }

    /// Reports keys of `table` that are not in `allowed`, with a suggestion.
    fn unknown_keys(&mut self, table: &Table, prefix: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let span = table.key(key).and_then(|k| k.span());
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            let section = if prefix.is_empty() {
                "the top level".to_string()
            } else {
                format!("[{prefix}]")
            };
            let mut help = format!("allowed in {section}: {}", allowed.join(", "));
            if let Some(n) = nearest(key, allowed) {
                help = format!("did you mean `{n}`? {help}");
            }
            self.problem(span, &path, "unknown key", help);
        }
    }

    fn section<'t>(&mut self, doc: &'t Table, name: &str) -> Option<&'t Table> {
        let item = doc.get(name)?;
        match item {
            Item::Table(t) => Some(t),
            other => {
                let span = doc.key(name).and_then(|k| k.span());
                let found = type_name(other);
                self.problem(
                    span,
                    name,
                    format!("expected a table, found {found}"),
                    format!("write it as a section: [{name}]"),
                );
                None
            }
        }
    }

    fn boolean(&mut self, table: &Table, section: &str, key: &str) -> Option<bool> {
        let item = table.get(key)?;
        let b = item.as_bool();
        if b.is_none() {
            let found = type_name(item);
            self.problem(
                item.span(),
                &format!("{section}.{key}"),
                format!("expected a boolean, found {found}"),
                "allowed: true or false",
            );
        }
        b
    }

    fn integer(
        &mut self,
        table: &Table,
        section: &str,
        key: &str,
        range: Range<i64>,
    ) -> Option<i64> {
        let item = table.get(key)?;
        let path = format!("{section}.{key}");
        let span = item
            .span()
            .or_else(|| table.key(key).and_then(|k| k.span()));
        let allowed = format!(
            "an integer from {} to {}",
            range.start,
            range.end.saturating_sub(1)
        );
        match item.as_integer() {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                self.problem(
                    span,
                    &path,
                    format!("{n} is out of range"),
                    format!("allowed: {allowed}"),
                );
                None
            }
            None => {
                let found = type_name(item);
                self.problem(
                    span,
                    &path,
                    format!("expected an integer, found {found}"),
                    format!("allowed: {allowed}"),
                );
                None
            }
        }
    }

    fn string<'t>(
        &mut self,
        table: &'t Table,
        section: &str,
        key: &str,
        allowed: &str,
    ) -> Option<(&'t str, Option<Range<usize>>)> {
        let item = table.get(key)?;
        let span = item.span();
        match item.as_str() {
            Some(s) => Some((s, span)),
            None => {
                let found = type_name(item);
                self.problem(
                    span,
                    &format!("{section}.{key}"),
                    format!("expected a string, found {found}"),
                    format!("allowed: {allowed}"),
                );
                None
            }
        }
    }

    fn choice<T: FromStr>(
        &mut self,
        table: &Table,
        section: &str,
        key: &str,
        allowed: &[&str],
    ) -> Option<T> {
        let words = allowed
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let (s, span) = self.string(table, section, key, &words)?;
        match s.parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                let mut help = format!("allowed: {words}");
                if let Some(n) = nearest(s, allowed) {
                    help = format!("did you mean \"{n}\"? {help}");
                }
                self.problem(
                    span,
                    &format!("{section}.{key}"),
                    format!("\"{s}\" is not allowed"),
                    help,
                );
                None
            }
        }
    }

    /// The strings of an array, each with its span; reports non-strings.
    fn string_array<'t>(
        &mut self,
        table: &'t Table,
        section: &str,
        key: &str,
        what: &str,
    ) -> Option<Vec<StringItem<'t>>> {
        let item = table.get(key)?;
        let path = format!("{section}.{key}");
        let Some(array) = item.as_array() else {
            let found = type_name(item);
            self.problem(
                item.span(),
                &path,
                format!("expected an array of strings, found {found}"),
                format!("write a list: {key} = [{what}]"),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in array.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push((i, s, v.span())),
                None => {
                    let found = type_name(&Item::Value(v.clone()));
                    self.problem(
                        v.span(),
                        &format!("{path}[{i}]"),
                        format!("expected a string, found {found}"),
                        format!("write each entry as a quoted string, e.g. {what}"),
                    );
                }
            }
        }
        Some(out)
    }
}

impl Config {
    /// Parses and validates `src`, the contents of `file`.
    ///
    /// Every problem in the file is reported, not just the first.
    ///
    /// ```
    /// use std::path::Path;
    /// use vibebox_core::config::Config;
    /// let c = Config::parse("[box]\ncpu_count = 4\n", Path::new("vibebox.toml")).unwrap();
    /// assert_eq!(c.cpu_count, 4);
    /// let err = Config::parse("[box]\ncpu_cont = 4\n", Path::new("vibebox.toml")).unwrap_err();
    /// assert!(err.to_string().contains("did you mean `cpu_count`?"));
    /// ```
    pub fn parse(src: &str, file: &Path) -> Result<Config, FileProblems> {
        let doc = match Document::parse(src.to_string()) {
            Ok(d) => d,
            Err(e) => {
                let message = e.message().trim().to_string();
                return Err(FileProblems(vec![FileProblem::at(
                    file,
                    src,
                    e.span(),
                    None,
                    format!("TOML syntax error: {message}"),
                )
                .with_help("fix the syntax; see the TOML format at toml.io")]));
            }
        };
        let mut c = Checker {
            file,
            src,
            problems: Vec::new(),
        };
        let mut config = Config::default();
        let root = doc.as_table();
        c.unknown_keys(root, "", TOP_KEYS);

        if let Some(t) = c.section(root, "box") {
            c.unknown_keys(t, "box", BOX_KEYS);
            if let Some(n) = c.integer(t, "box", "cpu_count", 1..257) {
                config.cpu_count = n as u32;
            }
            if let Some(n) = c.integer(t, "box", "ram_mb", 128..1_048_577) {
                config.ram_mb = n as u32;
            }
            if let Some(n) = c.integer(t, "box", "disk_gb", 1..16_385) {
                config.disk_gb = n as u32;
            }
            if let Some(list) = c.string_array(t, "box", "mounts", "\"~/data:~/data:read-only\"") {
                config.mounts.clear();
                let mut seen: Vec<(String, usize)> = Vec::new();
                for (i, s, span) in list {
                    let key = format!("box.mounts[{i}]");
                    match MountSpec::parse(s) {
                        Ok(spec) => {
                            let guest = mounts::guest_path(&spec.guest).unwrap_or_default();
                            if let Some((_, j)) = seen.iter().find(|(g, _)| *g == guest) {
                                c.problem(
                                    span.clone(),
                                    &key,
                                    format!(
                                        "the guest path {guest} is already used by box.mounts[{j}]"
                                    ),
                                    "give each mount its own guest path",
                                );
                            }
                            seen.push((guest, i));
                            config.mounts.push(MountEntry {
                                spec,
                                location: Location::of_span(src, span),
                            });
                        }
                        Err(e) => {
                            c.problem(span, &key, format!("invalid mount \"{s}\": {e}"), e.help())
                        }
                    }
                }
            }
            if let Some(list) = c.string_array(t, "box", "protect", "\"secrets/\"") {
                for (i, s, span) in list {
                    if s.is_empty() || s.chars().any(char::is_control) {
                        c.problem(
                            span,
                            &format!("box.protect[{i}]"),
                            "a protected path is empty or has a control character",
                            "write a path relative to the project (secrets/), under your home (~/x) or absolute",
                        );
                    } else if s.starts_with('~') && s != "~" && !s.starts_with("~/") {
                        c.problem(
                            span,
                            &format!("box.protect[{i}]"),
                            format!("`{s}` names another user's home"),
                            "only `~` and `~/...` are supported",
                        );
                    } else {
                        config.protect.push(s.to_string());
                    }
                }
            }
            if let Some(r) = c.choice(t, "box", "runtime", RuntimeChoice::ALLOWED) {
                config.runtime = r;
            }
            if let Some((name, span)) = c.string(t, "box", "image", IMAGE_NAME_RULE) {
                match ImageName::parse(name) {
                    Ok(n) => config.image = n,
                    Err(_) => c.problem(
                        span,
                        "box.image",
                        format!("\"{name}\" is not a valid image name"),
                        format!("allowed: {IMAGE_NAME_RULE}"),
                    ),
                }
            }
        }

        if let Some(t) = c.section(root, "supervisor") {
            c.unknown_keys(t, "supervisor", SUPERVISOR_KEYS);
            if let Some(n) = c.integer(t, "supervisor", "auto_shutdown_ms", 0..86_400_001) {
                config.auto_shutdown_ms = n as u64;
            }
            if let Some(v) = c.choice(t, "supervisor", "on_idle", OnIdle::ALLOWED) {
                config.on_idle = v;
            }
            if let Some(b) = c.boolean(t, "supervisor", "save_on_idle") {
                config.save_on_idle = b;
            }
        }

        if let Some(t) = c.section(root, "store") {
            c.unknown_keys(t, "store", STORE_KEYS);
            let url = c.string(t, "store", "url", STORE_URL_RULE);
            let endpoint = c.string(t, "store", "endpoint", ENDPOINT_RULE);
            match (url, endpoint) {
                (Some((url, span)), endpoint) => {
                    match StoreUrl::parse(url, endpoint.map(|(e, _)| e)) {
                        Ok(s) => config.store = Some(s),
                        Err(e) => c.problem(
                            span,
                            "store.url",
                            e.to_string(),
                            format!("allowed: {STORE_URL_RULE}; endpoint: {ENDPOINT_RULE}"),
                        ),
                    }
                }
                (None, Some((_, span))) => c.problem(
                    span,
                    "store.endpoint",
                    "an endpoint without a url",
                    "add url = \"s3://bucket/prefix\"",
                ),
                (None, None) => {}
            }
        }

        if let Some(t) = c.section(root, "network") {
            c.unknown_keys(t, "network", NETWORK_KEYS);
            if let Some(m) = c.choice(t, "network", "mode", NetworkMode::ALLOWED) {
                config.network.mode = m;
            }
            if let Some(b) = c.boolean(t, "network", "auto_expose") {
                config.network.auto_expose = b;
            }
            if let Some(n) = c.integer(t, "network", "max_connections", 1..65_537) {
                config.network.max_connections = n as u32;
            }
            if let Some(list) = c.string_array(t, "network", "entries", "\"github.com\"") {
                config.network.entries.clear();
                for (i, s, span) in list {
                    match NetworkEntry::parse(s) {
                        Ok(e) => config.network.entries.push(e),
                        Err(e) => c.problem(
                            span,
                            &format!("network.entries[{i}]"),
                            format!("invalid entry: {e}"),
                            e.help(),
                        ),
                    }
                }
            }
        }

        if let Some(t) = root.get("network").and_then(Item::as_table) {
            if let Some(item) = t.get("hosts") {
                let help =
                    "write hosts = { \"api.example.test\" = \"127.0.0.1\" }: names to IP addresses";
                match item.as_table_like() {
                    None => {
                        let found = type_name(item);
                        c.problem(
                            item.span(),
                            "network.hosts",
                            format!("expected a table, found {found}"),
                            help,
                        );
                    }
                    Some(table) => {
                        for (name, value) in table.iter() {
                            let key = format!("network.hosts.{name}");
                            let span = value.span();
                            let Some(normal) = crate::policy::normalize_name(name) else {
                                c.problem(
                                    span,
                                    &key,
                                    format!("\"{name}\" is not a valid domain name"),
                                    help,
                                );
                                continue;
                            };
                            match value.as_str().map(str::parse::<std::net::IpAddr>) {
                                Some(Ok(ip)) => {
                                    config.network.hosts.insert(normal, ip);
                                }
                                _ => c.problem(
                                    span,
                                    &key,
                                    "expected an IP address as a string",
                                    help,
                                ),
                            }
                        }
                    }
                }
            }
        }

        if let Some(t) = root.get("network").and_then(Item::as_table) {
            let help = "write expose = [3000, \"8080:80\"]: a guest port, or host-port:guest-port (1-65535)";
            if let Some(item) = t.get("expose") {
                match item.as_array() {
                    None => {
                        let found = type_name(item);
                        c.problem(
                            item.span(),
                            "network.expose",
                            format!("expected an array, found {found}"),
                            help,
                        );
                    }
                    Some(array) => {
                        for (i, v) in array.iter().enumerate() {
                            let key = format!("network.expose[{i}]");
                            let port = |n: i64| u16::try_from(n).ok().filter(|p| *p > 0);
                            let parsed = match v {
                                Value::Integer(n) => port(*n.value()).map(|p| (p, p)),
                                Value::String(text) => {
                                    text.value().split_once(':').and_then(|(h, g)| {
                                        Some((port(h.parse().ok()?)?, port(g.parse().ok()?)?))
                                    })
                                }
                                _ => None,
                            };
                            match parsed {
                                Some(pair)
                                    if config.network.expose.iter().any(|(h, _)| *h == pair.0) =>
                                {
                                    c.problem(
                                        v.span(),
                                        &key,
                                        format!("host port {} is exposed twice", pair.0),
                                        help,
                                    )
                                }
                                Some(pair) => config.network.expose.push(pair),
                                None => c.problem(
                                    v.span(),
                                    &key,
                                    "not a port or host-port:guest-port",
                                    help,
                                ),
                            }
                        }
                    }
                }
            }
        }

        if c.problems.is_empty() {
            Ok(config)
        } else {
            Err(FileProblems(c.problems))
        }
    }

    /// Reads and validates the config file at `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigLoadError> {
        let src = std::fs::read_to_string(file).map_err(|source| ConfigLoadError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(&src, file).map_err(ConfigLoadError::Invalid)
    }

    /// The mount specs without their positions.
    pub fn mount_specs(&self) -> Vec<MountSpec> {
        self.mounts.iter().map(|m| m.spec.clone()).collect()
    }
}

/// `source` (the text of a vibebox.toml) with `entry` added to `[network]
/// entries`, everything else kept as written (comments, order, layout). The
/// text is unchanged when the entry is there already.
///
/// ```
/// let out = vibebox_core::config::with_network_entry("# mine\n[network]\nentries = [\"a.example\"]\n", "b.example").unwrap();
/// assert_eq!(out, "# mine\n[network]\nentries = [\"a.example\", \"b.example\"]\n");
/// ```
pub fn with_network_entry(source: &str, entry: &str) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = source.parse().map_err(|e| format!("{e}"))?;
    let network = doc
        .entry("network")
        .or_insert_with(|| Item::Table(Table::new()));
    let Some(network) = network.as_table_mut() else {
        return Err("`network` is not a [network] section".into());
    };
    let entries = network
        .entry("entries")
        .or_insert(Item::Value(Value::Array(toml_edit::Array::new())));
    let Some(entries) = entries.as_array_mut() else {
        return Err("`network.entries` is not an array".into());
    };
    if entries.iter().any(|v| v.as_str() == Some(entry)) {
        return Ok(source.to_string());
    }
    entries.push(entry);
    Ok(doc.to_string())
}

/// Reading a config file failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{0}")]
    Invalid(FileProblems),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(src: &str) -> Result<Config, FileProblems> {
        Config::parse(src, Path::new("/p/vibebox.toml"))
    }

    fn one_problem(src: &str) -> FileProblem {
        let e = parse(src).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        e.0.into_iter().next().unwrap()
    }

    #[test]
    fn the_default_file_is_the_default_config() {
        let mut parsed = parse(DEFAULT_CONFIG).unwrap();
        for m in &mut parsed.mounts {
            assert_eq!(m.location.map(|l| l.line), Some(14));
            m.location = None;
        }
        assert_eq!(parsed, Config::default());
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn accepts_the_macos_vibebox_format_unchanged() {
        let src = "[box]\ncpu_count = 4\nram_mb = 4096\ndisk_gb = 10\nmounts = [\n    \"~/.codex:~/.codex:read-write\",\n    \"~/.claude:~/.claude:read-write\",\n]\n\n[supervisor]\nauto_shutdown_ms = 5000\n";
        let c = parse(src).unwrap();
        assert_eq!(
            (c.cpu_count, c.ram_mb, c.disk_gb, c.auto_shutdown_ms),
            (4, 4096, 10, 5000)
        );
        assert_eq!(c.mounts.len(), 2);
        assert_eq!(c.mounts[1].location.unwrap().line, 7);
        assert_eq!(c.network, NetworkConfig::default());
    }

    #[test]
    fn store_and_save_on_idle_are_checked() {
        let c = parse("[supervisor]\nsave_on_idle = true\n[store]\nurl = \"s3://saves/p\"\nendpoint = \"http://127.0.0.1:8333\"\n").unwrap();
        assert!(c.save_on_idle);
        assert_eq!(
            c.store.unwrap().to_string(),
            "s3://saves/p (endpoint http://127.0.0.1:8333)"
        );
        let p = one_problem("[store]\nurl = \"ftp://x\"\n");
        assert_eq!(p.key.as_deref(), Some("store.url"));
        assert_eq!(p.location.unwrap().line, 2);
        let p = one_problem("[store]\nendpoint = \"http://x\"\n");
        assert_eq!(p.key.as_deref(), Some("store.endpoint"));
        let p = one_problem("[supervisor]\nsave_on_idle = \"yes\"\n");
        assert_eq!(p.key.as_deref(), Some("supervisor.save_on_idle"));
        let p = one_problem("[store]\nurll = \"s3://abc\"\n");
        assert!(p.help.unwrap().contains("did you mean `url`"));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let p = one_problem("[box]\ncpu_count = = 2\n");
        assert_eq!(p.location.unwrap().line, 2);
        assert!(p.message.starts_with("TOML syntax error"), "{p}");
    }

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let p = one_problem("[box]\ncpu_count = 1\nram_gb = 2\n");
        assert_eq!(p.key.as_deref(), Some("box.ram_gb"));
        assert_eq!(p.location.unwrap().line, 3);
        assert!(
            p.help
                .as_deref()
                .unwrap()
                .starts_with("did you mean `ram_mb`?"),
            "{p}"
        );
        let p = one_problem("[netwrok]\n");
        assert!(
            p.help
                .as_deref()
                .unwrap()
                .contains("did you mean `network`?"),
            "{p}"
        );
        let p = one_problem("[supervisor]\nzzz = 1\n");
        assert_eq!(
            p.help.as_deref(),
            Some("allowed in [supervisor]: auto_shutdown_ms, on_idle, save_on_idle")
        );
    }

    #[test]
    fn wrong_types_and_ranges() {
        let p = one_problem("[box]\ncpu_count = \"2\"\n");
        assert_eq!(p.message, "expected an integer, found a string");
        assert_eq!(
            (p.location.unwrap().line, p.location.unwrap().column),
            (2, 13)
        );
        let p = one_problem("[box]\ncpu_count = 0\n");
        assert_eq!(p.message, "0 is out of range");
        assert_eq!(p.help.as_deref(), Some("allowed: an integer from 1 to 256"));
        let p = one_problem("box = 1\n");
        assert_eq!(p.message, "expected a table, found an integer");
        let p = one_problem("[box]\nmounts = \"~/a:~/a\"\n");
        assert!(p.message.starts_with("expected an array of strings"), "{p}");
        let p = one_problem("[box]\nmounts = [1]\n");
        assert_eq!(p.key.as_deref(), Some("box.mounts[0]"));
        let p = one_problem("[supervisor]\nauto_shutdown_ms = -1\n");
        assert_eq!(p.key.as_deref(), Some("supervisor.auto_shutdown_ms"));
    }

    #[test]
    fn bad_mounts_name_their_index_and_line() {
        let p = one_problem("[box]\nmounts = [\n  \"/a:/b\",\n  \"/a:/b:/c:read-only\",\n]\n");
        assert_eq!(p.key.as_deref(), Some("box.mounts[1]"));
        assert_eq!(p.location.unwrap().line, 4);
        assert!(p.message.contains("has 4"), "{p}");
        let p = one_problem("[box]\nmounts = [\"/a:../../etc\"]\n");
        assert!(p.message.contains("contains `..`"), "{p}");
        let p = one_problem("[box]\nmounts = [\"/a:/data\", \"/b:/data/\"]\n");
        assert!(p.message.contains("already used by box.mounts[0]"), "{p}");
    }

    #[test]
    fn ask_mode_is_a_network_mode() {
        let c = parse("[network]\nmode = \"ask\"\nentries = [\"github.com\"]\n").unwrap();
        assert_eq!(c.network.mode, NetworkMode::Ask);
    }

    #[test]
    fn an_entry_is_added_keeping_the_rest_of_the_file() {
        // No [network] yet: one is added, the comments stay.
        let out = with_network_entry("# keep me\n[box]\ncpu_count = 2\n", "a.example").unwrap();
        assert!(
            out.starts_with("# keep me\n[box]\ncpu_count = 2\n"),
            "{out}"
        );
        let c = parse(&out).unwrap();
        assert_eq!(c.network.entries.len(), 1);
        // No entries key yet; a multi-line array with comments.
        let out = with_network_entry("[network]\nmode = \"ask\"\n", "a.example").unwrap();
        assert_eq!(parse(&out).unwrap().network.entries.len(), 1);
        let src = "[network]\nentries = [\n  \"a.example\", # first\n  \"b.example\",\n]\n";
        let out = with_network_entry(src, "c.example").unwrap();
        assert!(out.contains("# first"), "{out}");
        assert_eq!(parse(&out).unwrap().network.entries.len(), 3);
        // Already there: unchanged.
        assert_eq!(with_network_entry(src, "a.example").unwrap(), src);
        // What cannot be edited is refused, not overwritten.
        assert!(with_network_entry("network = 3\n", "a.example").is_err());
        assert!(with_network_entry("network = { mode = \"ask\" }\n", "a.example").is_err());
        assert!(with_network_entry("[network]\nentries = \"x\"\n", "a.example").is_err());
        assert!(with_network_entry("[network\n", "a.example").is_err());
    }

    #[test]
    fn choices_list_what_is_allowed() {
        let p = one_problem("[network]\nmode = \"allowlst\"\n");
        assert_eq!(
            p.help.as_deref(),
            Some("did you mean \"allowlist\"? allowed: \"allowlist\", \"blocklist\", \"ask\"")
        );
        let p = one_problem("[box]\nruntime = \"docker\"\n");
        assert_eq!(
            p.help.as_deref(),
            Some("allowed: \"auto\", \"vm\", \"container\"")
        );
        let p = one_problem("[network]\nentries = [\"github.com\", \"git*hub.com\"]\n");
        assert_eq!(p.key.as_deref(), Some("network.entries[1]"));
        let p = one_problem("[box]\nimage = \"../evil\"\n");
        assert_eq!(p.key.as_deref(), Some("box.image"));
    }

    #[test]
    fn hosts_overrides_map_names_to_addresses() {
        let c = parse(
            "[network]\nhosts = { \"API.Example.test.\" = \"127.0.0.1\", \"v6.test\" = \"::1\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.network.hosts.get("api.example.test"),
            Some(&"127.0.0.1".parse().unwrap())
        );
        assert_eq!(c.network.hosts.len(), 2);
        let p = one_problem("[network]\nhosts = { \"a.test\" = \"not-an-ip\" }\n");
        assert_eq!(p.key.as_deref(), Some("network.hosts.a.test"));
        let p = one_problem("[network]\nhosts = { \"bad name\" = \"127.0.0.1\" }\n");
        assert!(p.message.contains("not a valid domain name"), "{p}");
        let p = one_problem("[network]\nhosts = [\"a\"]\n");
        assert!(p.message.starts_with("expected a table"), "{p}");
    }

    #[test]
    fn expose_takes_ports_and_pairs() {
        let c = parse("[network]\nexpose = [3000, \"8080:80\"]\n").unwrap();
        assert_eq!(c.network.expose, vec![(3000, 3000), (8080, 80)]);
        for bad in [
            "[0]",
            "[70000]",
            "[\"80\"]",
            "[\"a:b\"]",
            "[3000, \"3000:80\"]",
            "3000",
            "[1.5]",
        ] {
            let e = parse(&format!("[network]\nexpose = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("network.expose"), "{bad}: {e}");
        }
    }

    #[test]
    fn on_idle_suspends_unless_told_otherwise() {
        assert_eq!(Config::default().on_idle, OnIdle::Suspend);
        let c = parse("[supervisor]\non_idle = \"shutdown\"\n").unwrap();
        assert_eq!(c.on_idle, OnIdle::Shutdown);
        let p = one_problem("[supervisor]\non_idle = \"hibernate\"\n");
        assert_eq!(p.key.as_deref(), Some("supervisor.on_idle"));
    }

    #[test]
    fn auto_expose_is_on_unless_turned_off() {
        assert!(Config::default().network.auto_expose);
        assert!(
            !parse("[network]\nauto_expose = false\n")
                .unwrap()
                .network
                .auto_expose
        );
        let p = one_problem("[network]\nauto_expose = \"no\"\n");
        assert_eq!(p.key.as_deref(), Some("network.auto_expose"));
    }

    #[test]
    fn protect_and_max_connections() {
        let c =
            parse("[box]\nprotect = [\"secrets/\", \"~/.aws\"]\n[network]\nmax_connections = 16\n")
                .unwrap();
        assert_eq!(c.protect, vec!["secrets/", "~/.aws"]);
        assert_eq!(c.network.max_connections, 16);
        assert_eq!(
            Config::default().network.max_connections,
            DEFAULT_MAX_CONNECTIONS
        );
        let p = one_problem("[box]\nprotect = [\"a\\u001bb\"]\n");
        assert_eq!(p.key.as_deref(), Some("box.protect[0]"));
        let p = one_problem("[box]\nprotect = [\"~root/x\"]\n");
        assert_eq!(p.key.as_deref(), Some("box.protect[0]"));
        let p = one_problem("[network]\nmax_connections = 0\n");
        assert_eq!(p.key.as_deref(), Some("network.max_connections"));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = parse("[box]\ncpu_count = 0\nram = 1\n[network]\nmode = 3\n").unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    proptest! {
        #[test]
        fn parse_never_panics(src in "\\PC{0,200}") {
            let _ = parse(&src);
        }

        #[test]
        fn parse_never_panics_on_near_valid_files(
            key in "(cpu_count|ram_mb|disk_gb|mounts|runtime|image|zz)",
            value in "(-?[0-9]{1,20}|\"[a-z:~/.-]{0,20}\"|\\[\"[a-z:~/]{0,10}\"\\]|true|1\\.5)",
        ) {
            let _ = parse(&format!("[box]\n{key} = {value}\n"));
        }
    }
}
