//! Automatic port forwards: which TCP ports the box listens on, read from
//! its `/proc/net/tcp{,6}` by a small shell loop in the box, and which of
//! them the host forwards. Everything here is read from the box (whose root
//! can print anything): bounded, parsed strictly.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The most ports forwarded automatically (a box cannot take every port of
/// the host's loopback).
pub const MAX_AUTO_FORWARDS: usize = 32;

/// The most lines of one report read; the rest are ignored.
pub const MAX_REPORT_LINES: usize = 4096;

/// The shell loop run in the box (as `vibecoder`, with /bin/sh): every
/// second, one `L <local address>` line per listening TCP socket, then `E`.
/// Only shell builtins but `sleep`: cheap under emulation.
pub const WATCH_LOOP: &str = "while :; do \
for f in /proc/net/tcp /proc/net/tcp6; do \
while read -r _ local _ st _; do [ \"$st\" = 0A ] && echo \"L $local\"; done < $f; \
done 2>/dev/null; echo E; sleep 1; done";

/// Where a listening socket accepts connections from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every address (`0.0.0.0`, `::`), or the box's own: the host can reach it.
    Any,
    /// Only the box's loopback (`127.0.0.1`, `::1`): not reachable from outside.
    Loopback,
}

/// Reads one address of `/proc/net/tcp` (`0100007F:1F40`) or `tcp6`
/// (32 hex digits, `:`, port): its port and scope; `None` for addresses that
/// are neither any, the guest's, nor loopback (or malformed).
pub fn parse_local(addr: &str, guest: Ipv4Addr) -> Option<(u16, Scope)> {
    let (ip, port) = addr.split_once(':')?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if port.len() != 4 || !hex(port) || !hex(ip) {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    if port == 0 {
        return None;
    }
    let v4 = |hex: &str| -> Option<Ipv4Addr> {
        // The kernel prints the address as one native-endian (x86: little) word.
        let n = u32::from_str_radix(hex, 16).ok()?;
        Some(Ipv4Addr::from(n.swap_bytes()))
    };
    let scope_v4 = |a: Ipv4Addr| {
        if a.is_unspecified() || a == guest {
            Some(Scope::Any)
        } else if a.is_loopback() {
            Some(Scope::Loopback)
        } else {
            None
        }
    };
    let scope = match ip.len() {
        8 => scope_v4(v4(ip)?)?,
        32 => {
            let upper = ip.to_ascii_uppercase();
            if upper.bytes().all(|b| b == b'0') {
                Scope::Any
            } else if upper == "00000000000000000000000001000000" {
                Scope::Loopback
            } else if let Some(mapped) = upper.strip_prefix("0000000000000000FFFF0000") {
                scope_v4(v4(mapped)?)?
            } else {
                return None;
            }
        }
        _ => return None,
    };
    Some((port, scope))
}

/// Collects the reports of [`WATCH_LOOP`], one line at a time.
#[derive(Debug, Default)]
pub struct Watch {
    current: BTreeMap<u16, Scope>,
    lines: usize,
}

impl Watch {
    /// Feeds one line; returns the listening ports (with the widest scope
    /// each has) when the line ends a report.
    pub fn line(&mut self, line: &str, guest: Ipv4Addr) -> Option<BTreeMap<u16, Scope>> {
        if line == "E" {
            self.lines = 0;
            return Some(std::mem::take(&mut self.current));
        }
        self.lines += 1;
        if self.lines > MAX_REPORT_LINES {
            return None;
        }
        if let Some((port, scope)) = line
            .strip_prefix("L ")
            .and_then(|a| parse_local(a.trim(), guest))
        {
            let e = self.current.entry(port).or_insert(scope);
            *e = (*e).min(scope);
        }
        None
    }
}

/// Reads `ss -Hltnp` (as root in the box): the name of the process that
/// listens on each port, made safe to print and at most 32 characters.
pub fn parse_processes(out: &str) -> BTreeMap<u16, String> {
    let mut names = BTreeMap::new();
    for line in out.lines().take(MAX_REPORT_LINES) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(process)) = (fields.get(3), fields.get(5)) else {
            continue;
        };
        let Some(port) = local.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let Some(name) = process
            .strip_prefix("users:((\"")
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let name: String = name.chars().take(32).collect();
        names
            .entry(port)
            .or_insert_with(|| crate::text::for_terminal(&name));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 15);

    #[test]
    fn addresses_are_read_as_the_kernel_writes_them() {
        assert_eq!(
            parse_local("00000000:1F40", GUEST),
            Some((8000, Scope::Any))
        );
        assert_eq!(
            parse_local("0100007F:0BB8", GUEST),
            Some((3000, Scope::Loopback))
        );
        assert_eq!(parse_local("0F03000A:0050", GUEST), Some((80, Scope::Any)));
        assert_eq!(parse_local("0101A8C0:0050", GUEST), None);
        let any6 = format!("{}:1F90", "0".repeat(32));
        assert_eq!(parse_local(&any6, GUEST), Some((8080, Scope::Any)));
        assert_eq!(
            parse_local("00000000000000000000000001000000:1F90", GUEST),
            Some((8080, Scope::Loopback))
        );
        assert_eq!(
            parse_local("0000000000000000FFFF00000F03000A:1F90", GUEST),
            Some((8080, Scope::Any))
        );
        for bad in [
            "",
            ":",
            "00000000:",
            "00000000:0000",
            "0000000:1F40",
            "zzzzzzzz:1F40",
            "00000000:1F4000",
            "00000000:+F40",
        ] {
            assert_eq!(parse_local(bad, GUEST), None, "{bad}");
        }
    }

    #[test]
    fn reports_end_with_e_and_are_bounded() {
        let mut w = Watch::default();
        assert_eq!(w.line("L 0100007F:1F40", GUEST), None);
        assert_eq!(w.line("L 00000000:1F40", GUEST), None);
        assert_eq!(w.line("garbage \x1b[2J", GUEST), None);
        let r = w.line("E", GUEST).unwrap();
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![(8000, Scope::Any)]);
        assert!(w.line("E", GUEST).unwrap().is_empty());
        for p in 1..=10_000u32 {
            w.line(&format!("L 00000000:{:04X}", p % 65536), GUEST);
        }
        assert_eq!(w.line("E", GUEST).unwrap().len(), MAX_REPORT_LINES);
    }

    #[test]
    fn process_names_are_escaped_and_short() {
        let out = "LISTEN 0 5 0.0.0.0:8000 0.0.0.0:* users:((\"python3\",pid=812,fd=3))\n\
                   LISTEN 0 5 [::]:9000 [::]:* users:((\"\x1b]0;x\x07evil\",pid=9,fd=3))\n\
                   LISTEN 0 5 *:7000 *:* users:((\"averyveryveryveryverylongprocessname\",pid=1,fd=3))\n\
                   LISTEN 0 5 0.0.0.0:22 0.0.0.0:*\n\
                   nonsense";
        let n = parse_processes(out);
        assert_eq!(n[&8000], "python3");
        assert!(!n[&9000].contains('\x1b'));
        assert_eq!(n[&7000].chars().count(), 32);
        assert!(!n.contains_key(&22));
    }
}
