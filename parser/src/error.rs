//! Parse errors with their position.

use std::fmt;

/// A position in the Dockerfile: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct Position {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column number.
    pub col: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Why a Dockerfile (or one instruction) was rejected, and where.
///
/// Displays as `LINE:COL: message`; the CLI puts the file name in front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct ParseError {
    /// Where the problem is.
    pub pos: Position,
    /// What the problem is.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(pos: Position, message: impl Into<String>) -> Self {
        ParseError {
            pos,
            message: message.into(),
        }
    }

    /// The offending source line with a caret under the column, for humans:
    ///
    /// ```text
    ///   12 | RUNN make
    ///      | ^
    /// ```
    pub fn snippet(&self, source: &str) -> Option<String> {
        snippet(source, self.pos)
    }
}

/// Renders the line at `pos` with a caret under its column.
pub fn snippet(source: &str, pos: Position) -> Option<String> {
    let whole = source.lines().nth(pos.line.checked_sub(1)?)?;
    // A very long line is shown up to a point (the caret stays within it).
    const SHOWN: usize = 160;
    let cut: String = whole.chars().take(SHOWN.max(pos.col + 20)).collect();
    let line = if cut.len() < whole.len() {
        format!("{cut}...")
    } else {
        cut
    };
    let num = pos.line.to_string();
    let pad = " ".repeat(num.len());
    let caret_at: String = whole
        .chars()
        .take(pos.col.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    Some(format!(" {num} | {line}\n {pad} | {caret_at}^"))
}

/// A variable expansion failed (`${VAR:?message}`, a bad substitution).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExpandError(pub String);

/// A Dockerfile error ready to show: `FILE:LINE:COL: message`, then the source line and a
/// caret under the column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{error}{}", snippet.as_ref().map(|s| format!("\n{s}")).unwrap_or_default())]
pub struct DockerfileError {
    /// The file name shown.
    pub file: String,
    /// The error.
    pub error: ParseError,
    /// The rendered source line and caret.
    pub snippet: Option<String>,
}

/// Wraps a parse error with its file name and source snippet.
pub fn dockerfile_error(file: &str, source: &str, error: &ParseError) -> DockerfileError {
    DockerfileError {
        file: file.to_string(),
        error: error.clone(),
        snippet: error.snippet(source),
    }
}
