//! Detachable terminals in the box (`vibebox run`, `attach`, `ps`): each is a
//! tmux session on the box's own tmux server (`tmux -L vibebox`, run as
//! `vibecoder`). This module writes the shell lines the host sends over SSH
//! and reads what tmux answers; everything the box answers is attacker input
//! (its root can replace tmux), so parsing is strict and bounded.

use crate::text::shell_quote;

/// The tmux server of vibebox's terminals in the box.
pub const TMUX: &str = "tmux -L vibebox";

/// The exit code of the guest line when the terminal already runs.
pub const EXISTS_CODE: i32 = 3;

/// The longest terminal name.
pub const MAX_NAME: usize = 32;

/// The most terminals `ps` reports (a box cannot flood the host).
pub const MAX_TERMINALS: usize = 256;

/// A terminal's name: 1-32 of `A-Z a-z 0-9 _ -`, not starting with `-`
/// (tmux gives `.` and `:` meanings in targets; nothing else is needed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TermName(String);

impl TermName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name made from a command (its program's base name), with what is not
    /// allowed dropped; `term` when nothing is left.
    pub fn from_command(program: &str) -> TermName {
        let base = program.rsplit('/').next().unwrap_or(program);
        let clean: String = base
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .skip_while(|c| *c == '-')
            .take(MAX_NAME - 4)
            .collect();
        TermName(if clean.is_empty() {
            "term".into()
        } else {
            clean
        })
    }

    /// This name, or the first of `NAME-2`, `NAME-3`, … not in `taken`.
    pub fn first_free(&self, taken: &[String]) -> TermName {
        if !taken.iter().any(|t| t == &self.0) {
            return self.clone();
        }
        (2..)
            .map(|i| format!("{}-{i}", self.0))
            .find(|n| !taken.contains(n))
            .map(TermName)
            .unwrap_or_else(|| self.clone())
    }
}

impl std::str::FromStr for TermName {
    type Err = String;

    fn from_str(s: &str) -> Result<TermName, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(TermName(s.to_string()))
        } else {
            Err(format!(
                "`{}` is not a terminal name: use 1-{MAX_NAME} letters, digits, `_` or `-` (not first)",
                crate::text::for_terminal(s)
            ))
        }
    }
}

impl std::fmt::Display for TermName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The options every command sets on the server first (idempotent): keep the
/// server when no terminal is left, keep a finished terminal to report its
/// exit code, and say how to detach.
fn server_setup() -> String {
    [
        "start-server",
        ";",
        "set-option",
        "-g",
        "exit-empty",
        "off",
        ";",
        "set-option",
        "-wg",
        "remain-on-exit",
        "on",
        ";",
        "set-option",
        "-g",
        "status-right",
        " vibebox: detach with Ctrl-b d ",
        ";",
        "set-option",
        "-g",
        "status-right-length",
        "40",
    ]
    .iter()
    .map(|a| shell_quote(a))
    .collect::<Vec<_>>()
    .join(" ")
}

/// What terminal `name`'s pane runs: records the command line (for `ps`),
/// runs it, records its exit code, and detaches the clients attached to it
/// (they get the exit code). tmux's `pane-died` hook was tried for the
/// detaching and missed now and then (tmux 3.3a); this does not depend on it.
fn pane_line(name: &TermName, line: &str) -> String {
    // Options take a pane as target: `=NAME:` is that session's.
    let session = shell_quote(&format!("={name}:"));
    let target = shell_quote(&format!("={name}"));
    format!(
        "{TMUX} set-option -t {session} @vibebox_cmd {shown} 2>/dev/null; \
{line}; code=$?; \
{TMUX} set-option -t {session} @vibebox_exit \"$code\" 2>/dev/null; \
{TMUX} detach-client -s {target} 2>/dev/null; exit \"$code\"",
        shown = shell_quote(line),
    )
}

/// The shell line that starts terminal `name` running `command` in `dir`:
/// detached, or attached to the SSH session's terminal. Exits with
/// [`EXISTS_CODE`] when a terminal of that name still runs; one that finished
/// is replaced.
pub fn start_line(name: &TermName, dir: &str, command: &[String], detached: bool) -> String {
    let target = shell_quote(&format!("={name}"));
    let line = command
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let detach = if detached { " -d" } else { "" };
    format!(
        "{TMUX} {setup} >/dev/null && \
if {TMUX} has-session -t {target} 2>/dev/null; then \
if [ \"$({TMUX} display-message -p -t {target} '#{{pane_dead}}')\" = 1 ]; then {TMUX} kill-session -t {target}; \
else exit {EXISTS_CODE}; fi; fi; \
exec {TMUX} new-session{detach} -s {name} -c {dir} -x 200 -y 50 {cmd}",
        setup = server_setup(),
        dir = shell_quote(dir),
        cmd = shell_quote(&pane_line(name, &line)),
    )
}

/// The shell line that attaches to terminal `name`.
pub fn attach_line(name: &TermName) -> String {
    format!(
        "exec {TMUX} attach-session -t {}",
        shell_quote(&format!("={name}"))
    )
}

/// The fields `list_line` asks tmux for, one terminal a line.
/// (`|`: tmux writes a tab in a format as `_`; no name has a `|`. The
/// command comes last: it may hold one.)
const LIST_FORMAT: &str = "#{session_name}|#{session_created}|#{session_attached}|#{pane_dead}|#{pane_dead_status}|#{@vibebox_exit}|#{@vibebox_cmd}";

/// The shell line that lists the terminals (no output when there is none).
pub fn list_line() -> String {
    format!(
        "{TMUX} list-sessions -F {} 2>/dev/null || true",
        shell_quote(LIST_FORMAT)
    )
}

/// One terminal, as `vibebox ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Terminal {
    /// Its name.
    pub name: String,
    /// Its command line (as tmux reports it; escaped for a terminal).
    pub command: String,
    /// When it started (seconds since 1970).
    pub started: i64,
    /// Clients attached to it now.
    pub clients: u32,
    /// Whether its command still runs.
    pub running: bool,
    /// Its command's exit code, once it exited.
    pub exit_code: Option<i32>,
}

/// Reads `list_line`'s output; lines that are not well formed are skipped.
pub fn parse_list(out: &str) -> Vec<Terminal> {
    out.lines()
        .filter_map(|line| {
            let mut f = line.splitn(7, '|');
            let name: TermName = f.next()?.parse().ok()?;
            let started = f.next()?.parse::<i64>().ok()?;
            let clients = f.next()?.parse::<u32>().ok()?;
            let dead = match f.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            };
            let status = f.next()?;
            // Recorded by the pane when its command ended (the pane may take
            // a moment more to end).
            let recorded = f.next()?.parse::<i32>().ok();
            let command: String = f.next().unwrap_or("").chars().take(1024).collect();
            let exited = dead || recorded.is_some();
            Some(Terminal {
                name: name.0,
                command: crate::text::for_terminal(&command),
                started,
                clients,
                running: !exited,
                exit_code: recorded.or_else(|| if dead { status.parse().ok() } else { None }),
            })
        })
        .take(MAX_TERMINALS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_strict() {
        for good in ["a", "web", "agent-1", "A_b", &"x".repeat(32)] {
            assert!(good.parse::<TermName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "a b",
            "a.b",
            "a:b",
            "=a",
            "a;rm",
            "$(id)",
            "é",
            &"x".repeat(33),
        ] {
            assert!(bad.parse::<TermName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_from_commands_are_valid_and_free() {
        assert_eq!(
            TermName::from_command("/usr/bin/python3").as_str(),
            "python3"
        );
        assert_eq!(TermName::from_command("--.;").as_str(), "term");
        assert_eq!(TermName::from_command("my.app").as_str(), "myapp");
        let n = TermName::from_command(&"y".repeat(100));
        assert!(n.as_str().parse::<TermName>().is_ok());
        let taken = vec!["claude".to_string(), "claude-2".to_string()];
        assert_eq!(
            TermName::from_command("claude").first_free(&taken).as_str(),
            "claude-3"
        );
    }

    #[test]
    fn start_line_quotes_the_command_and_directory() {
        let name: TermName = "web".parse().unwrap();
        let line = start_line(
            &name,
            "/home/vibecoder/it's",
            &["sh".into(), "-c".into(), "echo $(id); exit 3".into()],
            true,
        );
        assert!(line.contains("new-session -d -s web -c '/home/vibecoder/it'\\''s'"));
        assert!(line.contains("exit 3; fi"));
        assert!(!start_line(&name, "/p", &["x".into()], false).contains(" -d "));
        // The pane's line, as the pane's shell gets it: the command once to
        // run and once, quoted, to record.
        let pane = pane_line(&name, "sh -c 'echo $(id); exit 3'");
        assert!(
            pane.contains("; sh -c 'echo $(id); exit 3'; code=$?;"),
            "{pane}"
        );
        assert!(
            pane.contains(r#"@vibebox_cmd 'sh -c '\''echo $(id); exit 3'\'''"#),
            "{pane}"
        );
        assert!(pane.ends_with("exit \"$code\""), "{pane}");
    }

    #[test]
    fn hostile_listings_are_bounded_and_escaped() {
        let out = "web|1795525953|2|0|||python3 -m http.server | cat\n\
                   done|1795525953|0|1|7||make\n\
                   ending|1795525953|1|0||4|bash\n\
                   bad name|1|0|0|||x\n\
                   evil|1|0|0|||\x1b]0;pwned\x07\n\
                   short|1\n\
                   nan|x|0|0|||x\n";
        let t = parse_list(out);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].name, "web");
        assert_eq!(t[0].command, "python3 -m http.server | cat");
        assert_eq!(
            (t[0].clients, t[0].running, t[0].exit_code),
            (2, true, None)
        );
        assert_eq!((t[1].running, t[1].exit_code), (false, Some(7)));
        assert_eq!((t[2].running, t[2].exit_code), (false, Some(4)));
        assert!(!t[3].command.contains('\x1b'));
        let flood = "t|1|0|0|||x\n".repeat(10_000);
        assert_eq!(parse_list(&flood).len(), MAX_TERMINALS);
    }
}
