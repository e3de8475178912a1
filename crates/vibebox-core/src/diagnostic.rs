//! Errors that point into a file: path, line, column, key, what is allowed.
//!
//! Every problem found in a user-edited file (`vibebox.toml`, `sessions.toml`,
//! `.vibebox/session.toml`) becomes a [`FileProblem`], so the CLI can print one
//! precise message per problem.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A 1-based line and column in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `src` (clamped to the end of `src`).
    ///
    /// ```
    /// use vibebox_core::diagnostic::Location;
    /// let loc = Location::of_offset("a = 1\nb = 2\n", 6);
    /// assert_eq!((loc.line, loc.column), (2, 1));
    /// ```
    pub fn of_offset(src: &str, offset: usize) -> Location {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = src[line_start..offset].chars().count() + 1;
        Location { line, column }
    }

    /// The location of the start of `span`, if any.
    pub fn of_span(src: &str, span: Option<Range<usize>>) -> Option<Location> {
        span.map(|s| Location::of_offset(src, s.start))
    }
}

/// One problem in one file, with everything a person needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// Where in the file, when known.
    pub location: Option<Location>,
    /// The dotted key the problem is about (`box.mounts[1]`), when there is one.
    pub key: Option<String>,
    /// What is wrong, in one sentence.
    pub message: String,
    /// What is allowed or what to do instead.
    pub help: Option<String>,
}

impl FileProblem {
    /// A problem at `span` of `src` in `file`.
    pub fn at(
        file: &Path,
        src: &str,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> FileProblem {
        FileProblem {
            file: file.to_path_buf(),
            location: Location::of_span(src, span),
            key,
            message: message.into(),
            help: None,
        }
    }

    /// Adds what is allowed or what to do.
    pub fn with_help(mut self, help: impl Into<String>) -> FileProblem {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Several problems found in one pass over a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileProblems(pub Vec<FileProblem>);

impl fmt::Display for FileProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
///
/// ```
/// use vibebox_core::diagnostic::nearest;
/// assert_eq!(nearest("cpu_cont", &["cpu_count", "ram_mb"]), Some("cpu_count"));
/// assert_eq!(nearest("zzz", &["cpu_count", "ram_mb"]), None);
/// ```
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_characters_not_bytes() {
        let src = "é = 1\nkey = 2";
        let loc = Location::of_offset(src, src.find("= 1").unwrap());
        assert_eq!((loc.line, loc.column), (1, 3));
    }

    #[test]
    fn location_clamps_past_end_and_inside_chars() {
        let src = "aé";
        assert_eq!(Location::of_offset(src, 99).column, 3);
        assert_eq!(Location::of_offset(src, 2).column, 2);
    }

    #[test]
    fn display_names_file_line_key_and_help() {
        let p = FileProblem::at(
            Path::new("/p/vibebox.toml"),
            "[box]\ncpu = 1\n",
            Some(6..9),
            Some("box.cpu".into()),
            "unknown key",
        )
        .with_help("did you mean `cpu_count`?");
        assert_eq!(
            p.to_string(),
            "/p/vibebox.toml:2:1: key `box.cpu`: unknown key\n  help: did you mean `cpu_count`?"
        );
    }
}
