//! Configuration errors that name the file, line, column and field, with a hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Every problem found in a configuration file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
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

/// The field path at a byte offset, from the table headers and the key on that line
/// (for errors reported by the TOML parser, which knows only a span).
pub fn path_at(src: &str, offset: usize) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut table = String::new();
    let mut pos = 0;
    let mut key = String::new();
    for line in src.split_inclusive('\n') {
        let start = pos;
        pos += line.len();
        let t = line.trim();
        if start > offset {
            break;
        }
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = match counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, c)) => {
                    *c += 1;
                    *c
                }
                None => {
                    counts.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{n}]");
            key.clear();
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
            key.clear();
        } else if let Some((k, _)) = t.split_once('=')
            && !t.starts_with('#')
        {
            key = k.trim().to_string();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(top level)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
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
    fn positions_and_paths() {
        let src = "[admin]\nlisten = \"x\"\n\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\nmode = \"bad\"\n";
        let off = src.find("\"bad\"").unwrap();
        assert_eq!(line_col(src, off), (8, 8));
        assert_eq!(path_at(src, off), "route[1].mode");
        assert_eq!(path_at(src, src.find("\"x\"").unwrap()), "admin.listen");
    }
}
