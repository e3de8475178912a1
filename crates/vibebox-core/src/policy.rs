//! Network policy rules: the `[network]` mode and its entries.
//!
//! An entry is one of:
//! - a domain name, `github.com`, optionally with a leading wildcard label,
//!   `*.githubusercontent.com`, and optionally a port, `example.com:443`;
//! - an IP address, `203.0.113.7`, `2001:db8::1`, or with a port,
//!   `203.0.113.7:443`, `[2001:db8::1]:443`;
//! - a CIDR block, `10.0.0.0/8`, `2001:db8::/32`.
//!
//! Names are compared in lower case without a trailing dot. Non-ASCII names
//! must be written in their punycode form (`xn--...`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// How the entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only the entries are reachable.
    Allowlist,
    /// Everything but the entries is reachable.
    Blocklist,
    /// The entries are reachable; a lookup of any other name asks the person
    /// at an attached host terminal (refused when nobody is attached).
    Ask,
}

impl NetworkMode {
    /// The words allowed in `vibebox.toml`.
    pub const ALLOWED: &'static [&'static str] = &["allowlist", "blocklist", "ask"];

    /// The spelling used in `vibebox.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Allowlist => "allowlist",
            NetworkMode::Blocklist => "blocklist",
            NetworkMode::Ask => "ask",
        }
    }

    /// Whether only the entries are reachable without asking anybody (an
    /// allowlist, or ask mode before the person answered).
    pub fn lists_what_is_reachable(self) -> bool {
        matches!(self, NetworkMode::Allowlist | NetworkMode::Ask)
    }
}

impl FromStr for NetworkMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "allowlist" => Ok(NetworkMode::Allowlist),
            "blocklist" => Ok(NetworkMode::Blocklist),
            "ask" => Ok(NetworkMode::Ask),
            _ => Err(()),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed entry of `network.entries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NetworkEntry {
    /// A domain name, lower case, without a trailing dot.
    Domain {
        /// The name without the `*.` prefix.
        name: String,
        /// `*.name`: subdomains of `name`.
        wildcard: bool,
        /// Only this port, when given.
        port: Option<u16>,
    },
    /// One address.
    Ip {
        /// The address.
        addr: IpAddr,
        /// Only this port, when given.
        port: Option<u16>,
    },
    /// A block of addresses.
    Cidr {
        /// The network address (host bits zero).
        addr: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Empty or only whitespace.
    #[error("the entry is empty")]
    Empty,
    /// Leading or trailing whitespace.
    #[error("the entry `{0}` has spaces around it")]
    Whitespace(String),
    /// Non-ASCII characters.
    #[error("the name `{0}` is not ASCII")]
    NotAscii(String),
    /// A wildcard anywhere but as the whole first label.
    #[error("the wildcard in `{0}` is not a leading `*.`")]
    BadWildcard(String),
    /// A malformed domain name.
    #[error("`{0}` is not a valid domain name: {1}")]
    BadName(String, &'static str),
    /// A port that is not 1-65535.
    #[error("the port `{0}` is not a number from 1 to 65535")]
    BadPort(String),
    /// A malformed CIDR block.
    #[error("`{0}` is not a valid CIDR block: {1}")]
    BadCidr(String, String),
}

impl EntryError {
    /// What is allowed, for the help line.
    pub fn help(&self) -> String {
        match self {
            EntryError::NotAscii(_) => {
                "write internationalised names in punycode (xn--...)".to_string()
            }
            EntryError::BadCidr(_, _) => {
                "write an address and a prefix length with the host bits zero, e.g. 10.0.0.0/8 or 2001:db8::/32".to_string()
            }
            _ => "entries are domain names (github.com), leading wildcards (*.npmjs.org), \
                  optionally with a port (example.com:443), IP addresses (203.0.113.7, [2001:db8::1]:443) \
                  or CIDR blocks (10.0.0.0/8)"
                .to_string(),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, EntryError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.chars().all(|c| c.is_ascii_digit()) => Ok(p),
        _ => Err(EntryError::BadPort(s.to_string())),
    }
}

fn check_name(original: &str, name: &str) -> Result<(), EntryError> {
    let bad = |why| Err(EntryError::BadName(original.to_string(), why));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with `-`");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, `-` and `_` are allowed in a label");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("the last label is all digits (write an IP address as an IP entry)");
    }
    Ok(())
}

impl NetworkEntry {
    /// Parses one entry.
    ///
    /// ```
    /// use vibebox_core::policy::NetworkEntry;
    /// assert!(NetworkEntry::parse("*.npmjs.org").is_ok());
    /// assert!(NetworkEntry::parse("GitHub.com.").is_ok());
    /// assert!(NetworkEntry::parse("10.0.0.0/8").is_ok());
    /// assert!(NetworkEntry::parse("git*hub.com").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<NetworkEntry, EntryError> {
        if s.trim().is_empty() {
            return Err(EntryError::Empty);
        }
        if s.trim() != s {
            return Err(EntryError::Whitespace(s.to_string()));
        }
        if !s.is_ascii() {
            return Err(EntryError::NotAscii(s.to_string()));
        }
        if let Some((addr, prefix)) = s.split_once('/') {
            let bad = |why: &str| EntryError::BadCidr(s.to_string(), why.to_string());
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| bad("the address is not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max && prefix.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| {
                    bad(&format!(
                        "the prefix length is not a number from 0 to {max}"
                    ))
                })?;
            let masked = mask(addr, prefix);
            if masked != addr {
                return Err(bad(&format!(
                    "host bits are set; did you mean {masked}/{prefix}?"
                )));
            }
            return Ok(NetworkEntry::Cidr { addr, prefix });
        }
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(NetworkEntry::Ip { addr, port: None });
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| EntryError::BadName(s.to_string(), "a `[` without `]`"))?;
            let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| {
                EntryError::BadName(s.to_string(), "not an IPv6 address in brackets")
            })?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':').ok_or_else(|| {
                    EntryError::BadName(s.to_string(), "expected `:port` after `]`")
                })?)?),
            };
            return Ok(NetworkEntry::Ip {
                addr: IpAddr::V6(addr),
                port,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        };
        if let Ok(addr) = host.parse::<std::net::Ipv4Addr>() {
            return Ok(NetworkEntry::Ip {
                addr: IpAddr::V4(addr),
                port,
            });
        }
        let lower = host.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(n) => (n, true),
            None => (lower, false),
        };
        if name.contains('*') || lower == "*" {
            return Err(EntryError::BadWildcard(s.to_string()));
        }
        check_name(s, name)?;
        Ok(NetworkEntry::Domain {
            name: name.to_string(),
            wildcard,
            port,
        })
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for NetworkEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkEntry::Domain {
                name,
                wildcard,
                port,
            } => {
                if *wildcard {
                    f.write_str("*.")?;
                }
                f.write_str(name)?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
            NetworkEntry::Ip { addr, port: None } => write!(f, "{addr}"),
            NetworkEntry::Ip {
                addr: IpAddr::V6(a),
                port: Some(p),
            } => write!(f, "[{a}]:{p}"),
            NetworkEntry::Ip {
                addr,
                port: Some(p),
            } => write!(f, "{addr}:{p}"),
            NetworkEntry::Cidr { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

/// The `[network]` section as `explain` shows it: entries as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkConfigView {
    /// Allowlist, blocklist or ask.
    pub mode: NetworkMode,
    /// The entries, normalised (lower case, no trailing dot).
    pub entries: Vec<String>,
    /// Resolver overrides (name → address).
    pub hosts: std::collections::BTreeMap<String, IpAddr>,
    /// Exposed guest ports: (host loopback port, guest port).
    pub expose: Vec<(u16, u16)>,
    /// Whether the ports the box listens on are forwarded automatically.
    pub auto_expose: bool,
}

impl From<&crate::config::NetworkConfig> for NetworkConfigView {
    fn from(n: &crate::config::NetworkConfig) -> Self {
        NetworkConfigView {
            mode: n.mode,
            entries: n.entries.iter().map(|e| e.to_string()).collect(),
            hosts: n.hosts.clone(),
            expose: n.expose.clone(),
            auto_expose: n.auto_expose,
        }
    }
}

/// What the policy says about one name or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The connection or lookup may go ahead.
    Allow,
    /// It is refused.
    Deny,
}

/// Normalises a name from a DNS query or a TLS/HTTP header for matching:
/// lower case, without one trailing dot. `None` for names that can never
/// match (empty, non-ASCII, malformed).
pub fn normalize_name(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    check_name(lower, lower).ok()?;
    Some(lower.to_string())
}

impl NetworkEntry {
    /// Whether this entry names `name` (normalised) on `port` (`None`: any port,
    /// as for a DNS lookup).
    ///
    /// `github.com` matches exactly `github.com`; `*.github.com` matches every
    /// name below it (`api.github.com`, `a.b.github.com`) but not `github.com`
    /// itself. A port in the entry restricts connections, not lookups.
    pub fn matches_name(&self, name: &str, port: Option<u16>) -> bool {
        let NetworkEntry::Domain {
            name: entry,
            wildcard,
            port: entry_port,
        } = self
        else {
            return false;
        };
        let name_ok = if *wildcard {
            name.len() > entry.len() + 1
                && name.ends_with(entry.as_str())
                && name.as_bytes()[name.len() - entry.len() - 1] == b'.'
        } else {
            name == entry
        };
        let port_ok = match (entry_port, port) {
            (Some(e), Some(p)) => *e == p,
            _ => true,
        };
        name_ok && port_ok
    }

    /// Whether this entry names address `ip` on `port`.
    pub fn matches_ip(&self, ip: IpAddr, port: u16) -> bool {
        match self {
            NetworkEntry::Ip { addr, port: p } => *addr == ip && p.is_none_or(|p| p == port),
            NetworkEntry::Cidr { addr, prefix } => {
                addr.is_ipv4() == ip.is_ipv4() && mask(ip, *prefix) == *addr
            }
            NetworkEntry::Domain { .. } => false,
        }
    }
}

/// Whether `ip` is loopback, private, link-local or otherwise not a public
/// internet address (where DNS rebinding would lead).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.octets()[0] == 0
                || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64) // 100.64/10 CGNAT
                || (a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18) // 198.18/15
        }
        IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || (a.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (a.segments()[0] & 0xffc0) == 0xfe80 // link local
                || a.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// A `[network]` policy ready to answer questions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Allowlist, blocklist or ask.
    pub mode: NetworkMode,
    /// The entries.
    pub entries: Vec<NetworkEntry>,
}

impl Policy {
    /// Builds the policy of a `[network]` section.
    pub fn new(mode: NetworkMode, entries: Vec<NetworkEntry>) -> Policy {
        Policy { mode, entries }
    }

    fn by_mode(&self, listed: bool) -> Verdict {
        match (self.mode, listed) {
            (NetworkMode::Allowlist | NetworkMode::Ask, true) | (NetworkMode::Blocklist, false) => {
                Verdict::Allow
            }
            _ => Verdict::Deny,
        }
    }

    /// May the guest look up / connect to `name` (on `port`; `None` for a lookup)?
    ///
    /// Malformed and non-ASCII names are always denied.
    pub fn decide_name(&self, name: &str, port: Option<u16>) -> Verdict {
        let Some(name) = normalize_name(name) else {
            return Verdict::Deny;
        };
        let listed = match (self.mode, port) {
            // A blocklist entry with a port blocks connections to that port only:
            // the name itself still resolves.
            (NetworkMode::Blocklist, None) => self.entries.iter().any(|e| {
                e.matches_name(&name, None) && matches!(e, NetworkEntry::Domain { port: None, .. })
            }),
            _ => self.entries.iter().any(|e| e.matches_name(&name, port)),
        };
        self.by_mode(listed)
    }

    /// May the guest connect to the raw address `ip`:`port` (one it did not get
    /// from an allowed name)? Internal addresses (loopback, private, link-local)
    /// need an explicit IP/CIDR entry even in blocklist mode.
    pub fn decide_ip(&self, ip: IpAddr, port: u16) -> Verdict {
        let listed = self.entries.iter().any(|e| e.matches_ip(ip, port));
        if is_internal(ip) {
            return if listed && self.mode.lists_what_is_reachable() {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
        }
        self.by_mode(listed)
    }

    /// May a name that the policy allows resolve to `ip` upstream? Answers in
    /// internal ranges are refused (DNS rebinding) unless an IP/CIDR entry
    /// allows them.
    pub fn accept_upstream_answer(&self, ip: IpAddr) -> bool {
        !is_internal(ip)
            || self.entries.iter().any(|e| match e {
                NetworkEntry::Ip { addr, .. } => *addr == ip,
                NetworkEntry::Cidr { .. } => e.matches_ip(ip, 0),
                NetworkEntry::Domain { .. } => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> NetworkEntry {
        NetworkEntry::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn domains_are_lowercased_without_trailing_dot() {
        assert_eq!(
            ok("GitHub.COM."),
            NetworkEntry::Domain {
                name: "github.com".into(),
                wildcard: false,
                port: None
            }
        );
        assert_eq!(
            ok("*.npmjs.org:443"),
            NetworkEntry::Domain {
                name: "npmjs.org".into(),
                wildcard: true,
                port: Some(443)
            }
        );
        assert_eq!(
            ok("xn--bcher-kva.example").to_string(),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn addresses_and_blocks() {
        assert_eq!(ok("203.0.113.7:443").to_string(), "203.0.113.7:443");
        assert_eq!(ok("2001:db8::1").to_string(), "2001:db8::1");
        assert_eq!(ok("[2001:db8::1]:22").to_string(), "[2001:db8::1]:22");
        assert_eq!(ok("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(ok("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(ok("0.0.0.0/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn refuses_malformed_entries() {
        for bad in [
            "",
            "  ",
            " github.com",
            "git*hub.com",
            "*",
            "*.",
            "a.*.com",
            "**.com",
            "github..com",
            "-github.com",
            "github.com:0",
            "github.com:65536",
            "github.com:+1",
            "github.com:",
            "bücher.example",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/",
            "300.1.1.1/8",
            "[2001:db8::1",
            "[2001:db8::1]443",
            "1.2.3",
            "exa mple.com",
            "example.com/path",
            "http://example.com",
        ] {
            assert!(
                NetworkEntry::parse(bad).is_err(),
                "`{bad}` should be refused"
            );
        }
    }

    #[test]
    fn cidr_host_bits_suggest_the_network() {
        let e = NetworkEntry::parse("10.1.2.3/8").unwrap_err();
        assert!(e.to_string().contains("did you mean 10.0.0.0/8?"), "{e}");
    }

    fn policy(mode: NetworkMode, entries: &[&str]) -> Policy {
        Policy::new(mode, entries.iter().map(|e| ok(e)).collect())
    }

    #[test]
    fn bare_names_match_exactly_and_wildcards_match_below() {
        let p = policy(NetworkMode::Allowlist, &["github.com", "*.npmjs.org"]);
        assert_eq!(p.decide_name("github.com", None), Verdict::Allow);
        assert_eq!(p.decide_name("GitHub.COM.", Some(443)), Verdict::Allow);
        assert_eq!(p.decide_name("api.github.com", None), Verdict::Deny);
        assert_eq!(p.decide_name("evilgithub.com", None), Verdict::Deny);
        assert_eq!(p.decide_name("github.com.evil.net", None), Verdict::Deny);
        assert_eq!(p.decide_name("registry.npmjs.org", None), Verdict::Allow);
        assert_eq!(p.decide_name("a.b.npmjs.org", None), Verdict::Allow);
        assert_eq!(p.decide_name("npmjs.org", None), Verdict::Deny);
        assert_eq!(p.decide_name("xnpmjs.org", None), Verdict::Deny);
        assert_eq!(p.decide_name("", None), Verdict::Deny);
        assert_eq!(p.decide_name("bücher.npmjs.org", None), Verdict::Deny);
        assert_eq!(p.decide_name("github.com..", None), Verdict::Deny);
    }

    #[test]
    fn punycode_names_match_their_entries() {
        let p = policy(NetworkMode::Allowlist, &["xn--bcher-kva.example"]);
        assert_eq!(p.decide_name("XN--BCHER-KVA.example", None), Verdict::Allow);
        assert_eq!(p.decide_name("bucher.example", None), Verdict::Deny);
    }

    #[test]
    fn ports_restrict_connections_not_lookups() {
        let p = policy(NetworkMode::Allowlist, &["example.com:443"]);
        assert_eq!(p.decide_name("example.com", None), Verdict::Allow);
        assert_eq!(p.decide_name("example.com", Some(443)), Verdict::Allow);
        assert_eq!(p.decide_name("example.com", Some(80)), Verdict::Deny);
        let b = policy(NetworkMode::Blocklist, &["example.com:25", "evil.com"]);
        assert_eq!(b.decide_name("example.com", None), Verdict::Allow);
        assert_eq!(b.decide_name("example.com", Some(25)), Verdict::Deny);
        assert_eq!(b.decide_name("example.com", Some(443)), Verdict::Allow);
        assert_eq!(b.decide_name("evil.com", None), Verdict::Deny);
        assert_eq!(b.decide_name("other.org", Some(80)), Verdict::Allow);
    }

    #[test]
    fn raw_addresses_follow_ip_entries_and_internal_ranges_need_one() {
        let a = policy(
            NetworkMode::Allowlist,
            &["203.0.113.0/24", "198.51.100.7:443", "10.1.0.0/16"],
        );
        assert_eq!(
            a.decide_ip("203.0.113.9".parse().unwrap(), 80),
            Verdict::Allow
        );
        assert_eq!(
            a.decide_ip("198.51.100.7".parse().unwrap(), 443),
            Verdict::Allow
        );
        assert_eq!(
            a.decide_ip("198.51.100.7".parse().unwrap(), 22),
            Verdict::Deny
        );
        assert_eq!(a.decide_ip("192.0.2.1".parse().unwrap(), 80), Verdict::Deny);
        assert_eq!(a.decide_ip("10.1.2.3".parse().unwrap(), 80), Verdict::Allow);
        let b = policy(NetworkMode::Blocklist, &["203.0.113.0/24"]);
        assert_eq!(
            b.decide_ip("203.0.113.9".parse().unwrap(), 80),
            Verdict::Deny
        );
        assert_eq!(
            b.decide_ip("192.0.2.1".parse().unwrap(), 80),
            Verdict::Allow
        );
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert_eq!(
                b.decide_ip(internal.parse().unwrap(), 80),
                Verdict::Deny,
                "{internal}"
            );
        }
    }

    #[test]
    fn rebinding_answers_are_refused_unless_listed() {
        let p = policy(NetworkMode::Allowlist, &["github.com", "10.9.0.0/16"]);
        assert!(p.accept_upstream_answer("140.82.112.3".parse().unwrap()));
        assert!(!p.accept_upstream_answer("127.0.0.1".parse().unwrap()));
        assert!(!p.accept_upstream_answer("192.168.0.10".parse().unwrap()));
        assert!(p.accept_upstream_answer("10.9.3.4".parse().unwrap()));
    }

    proptest! {
        #[test]
        fn wildcards_never_match_outside_their_domain(
            sub in "[a-z0-9]{1,10}",
            base in "[a-z]{1,8}\\.[a-z]{2,5}",
            other in "[a-z]{1,8}\\.[a-z]{2,5}",
        ) {
            let p = policy(NetworkMode::Allowlist, &[&format!("*.{base}")]);
            prop_assert_eq!(p.decide_name(&format!("{sub}.{base}"), None), Verdict::Allow);
            prop_assert_eq!(p.decide_name(&format!("{sub}.{base}").to_uppercase(), None), Verdict::Allow);
            prop_assert_eq!(p.decide_name(&format!("{sub}.{base}."), None), Verdict::Allow);
            prop_assert_eq!(p.decide_name(&base, None), Verdict::Deny);
            prop_assert_eq!(p.decide_name(&format!("{sub}{base}"), None), Verdict::Deny);
            if other != base && !other.ends_with(&format!(".{base}")) {
                prop_assert_eq!(p.decide_name(&other, None), Verdict::Deny);
                prop_assert_eq!(p.decide_name(&format!("{base}.{other}"), None), Verdict::Deny);
            }
        }

        #[test]
        fn allowlist_and_blocklist_are_opposites_for_names(
            name in "[a-z]{1,6}\\.(com|org|net)",
            entries in proptest::collection::vec("(\\*\\.)?[a-z]{1,6}\\.(com|org|net)", 0..5),
        ) {
            let e: Vec<&str> = entries.iter().map(String::as_str).collect();
            let a = policy(NetworkMode::Allowlist, &e).decide_name(&name, None);
            let b = policy(NetworkMode::Blocklist, &e).decide_name(&name, None);
            prop_assert_ne!(a, b);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = NetworkEntry::parse(&s);
        }

        #[test]
        fn domains_round_trip(
            wild in any::<bool>(),
            labels in proptest::collection::vec("[a-z][a-z0-9]{0,10}", 1..4),
            port in proptest::option::of(1u16..),
        ) {
            let mut s = labels.join(".");
            if wild { s = format!("*.{s}"); }
            if let Some(p) = port { s = format!("{s}:{p}"); }
            let e = NetworkEntry::parse(&s).unwrap();
            prop_assert_eq!(e.to_string(), s.clone());
            prop_assert_eq!(NetworkEntry::parse(&s.to_uppercase()).unwrap(), e);
        }
    }
}
