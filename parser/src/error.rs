//! Parse errors with their position.

use std::fmt;

/// A position in the Dockerfile: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
    /// What the problem is, lower-case.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(pos: Position, message: impl Into<String>) -> Self {
        ParseError {
            pos,
            message: message.into(),
        }
    }
}

/// A variable expansion failed (`${VAR:?message}`, a bad substitution).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExpandError(pub String);
