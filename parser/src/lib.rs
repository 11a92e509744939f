//! The Dockerfile parser: text to a typed, still unexpanded model that the builder consumes.
//!
//! # Brief overview
//!
//! - [`parse`] reads a whole Dockerfile into a [`Document`]: parser directives
//!   ([`Directives`]), then one [`Node`] per instruction with continuation lines joined,
//!   comments dropped, flags split off and exec (JSON) form recognized.
//! - [`parse_line`] reads one instruction (as `kiln import --change` takes it).
//! - [`instruction`] turns a [`Node`] into a typed [`Instruction`].
//! - [`Lexer`] expands words as BuildKit does (quotes, escapes, `${VAR:-default}`, ...)
//!   against an [`Env`].
//! - Errors are [`ParseError`]s carrying a line and column.
//!
//! ```
//! let doc = parser::parse("FROM busybox\nRUN echo hi\n").unwrap();
//! assert_eq!(doc.nodes[1].keyword, "RUN");
//! ```

pub mod ast;
pub mod error;
pub mod instruction;
pub mod lines;
pub mod shell;

pub use ast::{Args, Directives, Document, Node};
pub use error::{ExpandError, ParseError, Position};
pub use instruction::{Command, Instruction, instruction};
pub use lines::{parse, parse_line};
pub use shell::{Env, Lexer};
