//! The untyped syntax tree: one [`Node`] per instruction, before any expansion.

use crate::error::Position;

/// The arguments of an instruction as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Args {
    /// Shell form: the text after the keyword and flags, continuation lines joined.
    Shell(String),
    /// Exec (JSON array) form.
    Json(Vec<String>),
}

/// One instruction line (with its continuation lines), keyword upper-cased, flags split off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The instruction keyword, upper-case (`RUN`, `COPY`, ...).
    pub keyword: String,
    /// Leading `--name[=value]` flags, as written.
    pub flags: Vec<String>,
    /// The arguments.
    pub args: Args,
    /// Where the keyword starts.
    pub start: Position,
    /// The last physical line of the instruction.
    pub end_line: usize,
    /// The instruction as written, continuation lines joined (for history and messages).
    pub original: String,
}

/// Parser directives from the top of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directives {
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// The `# syntax=` value, if any.
    pub syntax: Option<String>,
    /// The `# check=` value, if any.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Document {
    /// The parser directives.
    pub directives: Directives,
    /// The instructions in order.
    pub nodes: Vec<Node>,
}
