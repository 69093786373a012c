//! Configuration errors that name the file, line, column and field, with a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
///
/// Displayed as `file:line:col: field: message`, then `  hint: ...` on a second line when
/// there is a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}:{line}:{column}: {field}: {message}{}",
    .file.display(),
    HintLine(.hint.as_deref())
)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a path (`route[2].forward[0]`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// The hint of an error, as the second line of its text (nothing without a hint).
struct HintLine<'a>(Option<&'a str>);

impl fmt::Display for HintLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(hint) => write!(f, "\n  hint: {hint}"),
            None => Ok(()),
        }
    }
}

/// Every problem found in a configuration file (at least one).
///
/// Displayed as the errors one after the other, one per line (each followed by its hint
/// line). The errors are all in that text, so there is no further [`source`].
///
/// [`source`]: std::error::Error::source
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Errors, one per line.
struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// The field a parser error is about, from the path the deserializer was at
/// (`route[2].rewrite[1].delete`); the parser's own bookkeeping (the inside of a
/// [`toml::Spanned`]) is left out. An empty path (a syntax error) is `(syntax)`.
pub fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        "(syntax)".into()
    } else {
        out
    }
}

/// Collects errors while a file is validated.
pub struct Reporter<'s> {
    file: &'s Path,
    src: &'s str,
    errors: Vec<ConfigError>,
}

impl<'s> Reporter<'s> {
    /// A reporter for `src`, read from `file`.
    pub fn new(file: &'s Path, src: &'s str) -> Self {
        Reporter {
            file,
            src,
            errors: Vec::new(),
        }
    }

    /// Records an error at `span` of field `field`.
    pub fn error(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column) = line_col(self.src, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
            hint,
        });
    }

    /// Whether any error was recorded.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors recorded.
    pub fn finish(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let src = "[admin]\nlisten = \"x\"\n\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\nmode = \"bad\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 17), (2, 10));
        assert_eq!(line_col(src, 71), (8, 8));
        assert_eq!(line_col(src, 10_000), (9, 1));
    }

    #[test]
    fn config_errors_are_a_std_error_with_every_error_in_its_text() {
        let error = |line, field: &str, hint: Option<&str>| ConfigError {
            file: PathBuf::from("t.toml"),
            line,
            column: 3,
            field: field.into(),
            message: "bad".into(),
            hint: hint.map(String::from),
        };
        let errors = ConfigErrors(vec![
            error(1, "route[0].mode", Some("use \"all\"")),
            error(2, "route[1].name", None),
        ]);
        let boxed: Box<dyn std::error::Error> = Box::new(errors);
        assert_eq!(
            boxed.to_string(),
            "t.toml:1:3: route[0].mode: bad\n  hint: use \"all\"\nt.toml:2:3: route[1].name: bad"
        );
        assert!(boxed.source().is_none());
        let single: Box<dyn std::error::Error> = Box::new(error(4, "admin.listen", None));
        assert_eq!(single.to_string(), "t.toml:4:3: admin.listen: bad");
    }
}
