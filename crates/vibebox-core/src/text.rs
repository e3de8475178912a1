//! Text that came from the box or a repository, made safe for a terminal.
//!
//! Names, TLS SNI, HTTP Host headers, console lines and file names can hold
//! escape sequences that move the cursor, rewrite the screen, set the window
//! title or worse. Everything vibebox prints that it did not write itself goes
//! through [`for_terminal`]. JSON output does not need it (serde escapes
//! control characters), and stays valid JSON.

/// `s` with every control character (C0, DEL, C1), and the Unicode characters
/// that reorder or hide text (bidirectional overrides, zero-width), written as
/// a visible `\u{…}` escape. A backslash stays a backslash.
///
/// ```
/// use vibebox_core::text::for_terminal;
/// assert_eq!(for_terminal("ok.example"), "ok.example");
/// assert_eq!(for_terminal("a\x1b]0;pwned\x07b"), "a\\u{1b}]0;pwned\\u{7}b");
/// assert_eq!(for_terminal("x\u{202e}y"), "x\\u{202e}y");
/// ```
pub fn for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_unsafe(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Like [`for_terminal`], for bytes that may not be UTF-8 (invalid sequences
/// become U+FFFD first). Newlines are kept when `keep_newlines`.
pub fn bytes_for_terminal(bytes: &[u8], keep_newlines: bool) -> String {
    let text = String::from_utf8_lossy(bytes);
    if !keep_newlines {
        return for_terminal(&text);
    }
    text.split('\n')
        .map(|l| for_terminal(l.strip_suffix('\r').unwrap_or(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` quoted for a POSIX shell: unchanged when it is made only of safe
/// characters, else in single quotes.
///
/// ```
/// use vibebox_core::text::shell_quote;
/// assert_eq!(shell_quote("ls"), "ls");
/// assert_eq!(shell_quote("it's; rm -rf /"), "'it'\\''s; rm -rf /'");
/// ```
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_every_control_character() {
        for b in (0u8..0x20).chain([0x7f]) {
            let s = for_terminal(&char::from(b).to_string());
            assert!(s.starts_with("\\u{"), "{b:#x} -> {s}");
        }
        assert_eq!(for_terminal("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(for_terminal("naïve ✓"), "naïve ✓");
    }

    #[test]
    fn bytes_keep_lines_when_asked() {
        assert_eq!(
            bytes_for_terminal(b"one\r\ntwo\x1b[2J\n\xff", true),
            "one\ntwo\\u{1b}[2J\n\u{fffd}"
        );
        assert_eq!(bytes_for_terminal(b"a\nb", false), "a\\u{a}b");
    }

    proptest::proptest! {
        #[test]
        fn output_has_no_control_characters(s in "\\PC*|[\\x00-\\x7f\\u{80}-\\u{9f}]*") {
            proptest::prop_assert!(!for_terminal(&s).chars().any(char::is_control));
        }
    }

    #[test]
    fn quoting_survives_hostile_arguments() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's; rm -rf /"), "'it'\\''s; rm -rf /'");
        assert_eq!(shell_quote("$(id)"), "'$(id)'");
    }
}
