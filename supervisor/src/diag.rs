//! Diagnostics a person can act on: `file:line:column: what is wrong; what to do`.
//!
//! Every validator in postmaster reports through [`Diagnostics`], which collects all
//! problems in one pass instead of stopping at the first: someone who mistyped three
//! things in the accounts file should learn about all three at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in an input file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Diagnostic {
    pub(crate) file: PathBuf,
    /// 1-based line of the offending text.
    pub(crate) line: usize,
    /// 1-based column, counted in characters (not bytes) so editors agree with it.
    pub(crate) column: usize,
    /// What is wrong.
    pub(crate) message: String,
    /// What to do about it; empty when the message says it all.
    pub(crate) hint: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "; {}", self.hint)?;
        }
        Ok(())
    }
}

/// The text of an input file together with its name, to turn byte offsets into
/// line and column.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
}

impl Source {
    pub(crate) fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// 1-based (line, column) of a byte offset; offsets past the end point just past
    /// the last character, and offsets inside a multi-byte character count as it.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        // Count characters by their first byte so a cut inside one still counts it once.
        let column = before[line_start..]
            .iter()
            .filter(|&&b| (b & 0xC0) != 0x80)
            .count()
            + 1;
        (line, column)
    }
}

/// Collects diagnostics for one source file.
#[derive(Debug)]
pub(crate) struct Diagnostics<'s> {
    source: &'s Source,
    list: Vec<Diagnostic>,
}

impl<'s> Diagnostics<'s> {
    pub(crate) fn new(source: &'s Source) -> Self {
        Diagnostics {
            source,
            list: Vec::new(),
        }
    }

    pub(crate) fn source(&self) -> &'s Source {
        self.source
    }

    /// Records a problem at the start of `span`.
    pub(crate) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let (line, column) = self.source.position(span.start);
        self.list.push(Diagnostic {
            file: self.source.path.clone(),
            line,
            column,
            message: message.into(),
            hint: hint.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The diagnostics in file order, so that a person can fix them top to bottom.
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(|a| (a.line, a.column));
        self.list
    }
}

/// A diagnostic about a file as a whole (it cannot be read, say), pinned to 1:1.
pub(crate) fn whole_file(
    path: &Path,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message: message.into(),
        hint: hint.into(),
    }
}

/// Several diagnostics, printable one per line: the error type of every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) Vec<Diagnostic>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let s = Source::new("a.toml", "ab\nüx = 1\n");
        assert_eq!(s.position(0), (1, 1));
        assert_eq!(s.position(1), (1, 2));
        assert_eq!(s.position(3), (2, 1));
        // 'x' comes after the two-byte 'ü': byte 5, character column 2.
        assert_eq!(s.position(5), (2, 2));
        assert_eq!(s.position(1000), (3, 1));
    }

    #[test]
    fn display_is_file_line_column_message_hint() {
        let s = Source::new("/etc/postmaster/accounts.toml", "x\ny = 1\n");
        let mut d = Diagnostics::new(&s);
        d.error(2..3, "unknown key `y`", "remove it");
        let list = d.into_sorted();
        assert_eq!(
            list[0].to_string(),
            "/etc/postmaster/accounts.toml:2:1: unknown key `y`; remove it"
        );
    }
}
