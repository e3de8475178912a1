//! Talking to the person at the terminal: relative times, tables, confirmations.

use std::io::{BufRead, IsTerminal, Write};

use jiff::Timestamp;

/// "just now", "5 seconds ago", "3 minutes ago", "2 hours ago", "4 days ago".
pub fn ago(then: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second() - then.as_second();
    if secs < 0 {
        return "in the future".to_string();
    }
    let plural = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    match secs {
        0..=4 => "just now".to_string(),
        5..=59 => plural(secs, "second"),
        60..=3599 => plural(secs / 60, "minute"),
        3600..=86_399 => plural(secs / 3600, "hour"),
        _ => plural(secs / 86_400, "day"),
    }
}

/// Formats rows as left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Whether both stdin and stderr are terminals, so a question can be asked.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks a yes/no question on the terminal; anything but y/yes is no.
pub fn confirm(question: &str) -> std::io::Result<bool> {
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ago_reads_like_a_person() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let t = |s: i64| ago(Timestamp::from_second(now.as_second() - s).unwrap(), now);
        assert_eq!(t(0), "just now");
        assert_eq!(t(30), "30 seconds ago");
        assert_eq!(t(60), "1 minute ago");
        assert_eq!(t(180), "3 minutes ago");
        assert_eq!(t(7200), "2 hours ago");
        assert_eq!(t(86_400 * 3), "3 days ago");
        assert_eq!(t(-10), "in the future");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["ID".into(), "DIR".into()],
            vec!["abc".into(), "/x".into()],
        ];
        assert_eq!(table(&rows), "ID   DIR\nabc  /x\n");
    }
}
