//! The Dockerfile parser: text to a typed, still unexpanded model that the builder consumes,
//! accepting what BuildKit's `docker/dockerfile:1` frontend accepts.
//!
//! # Brief overview
//!
//! - [`parse`] reads a whole Dockerfile into a [`Document`]: parser [`Directives`], then one
//!   [`Node`] per instruction with continuation lines joined, comments dropped, flags split
//!   off, exec (JSON) form recognized and heredoc bodies attached ([`Heredoc`]).
//!   [`Node::dump`] renders BuildKit's test format.
//! - [`instruction`] types a node into an [`Instruction`] with every flag checked
//!   (`RUN --mount` as [`Mount`], `--chmod` as [`Chmod`], HEALTHCHECK durations, ...).
//! - [`stages`] groups instructions into [`Stage`]s with the global ARGs before the first FROM.
//! - [`Lexer`] expands words as BuildKit does (quotes, escapes, `${VAR:-default}`,
//!   `${VAR#pattern}`, ...) against an [`Env`], and can report which variables a word used.
//! - [`dockerignore::Matcher`] applies `.dockerignore` patterns.
//! - [`lint`] runs BuildKit's build checks.
//! - Errors are [`ParseError`]s carrying a line and column; [`ParseError::snippet`] shows the
//!   source line with a caret.
//!
//! ```
//! let doc = parser::parse("FROM busybox\nRUN echo hi\n").unwrap();
//! assert_eq!(doc.nodes[1].dump(), r#"(run "echo hi")"#);
//! ```

pub mod ast;
pub mod dockerignore;
pub mod error;
pub mod flags;
mod heredoc;
pub mod instruction;
pub mod json;
pub mod lines;
pub mod lint;
pub mod node;
pub mod shell;
pub mod stages;

pub use ast::{Args, Directives, Document, Heredoc, KeyValue, Node, Warning};
pub use error::{DockerfileError, ExpandError, ParseError, Position, dockerfile_error};
pub use flags::{Chmod, Mount, MountKind, Sharing};
pub use instruction::{
    ArgDecl, Command, CopySpec, From, Healthcheck, Instruction, NetworkMode, Run, Security,
    instruction,
};
pub use lines::{parse, parse_line};
pub use shell::{Env, Lexer};
pub use stages::{Stage, stages};

/// Runs every entry point over `text` (for the fuzz target and the property test): parse,
/// type, expand, lint, `.dockerignore`. Panics only on a bug.
#[doc(hidden)]
pub fn fuzz_one(text: &str) {
    let env: Vec<(String, String)> =
        vec![("A".into(), "a b".into()), ("EMPTY".into(), String::new())];
    let lexer = Lexer::default();
    let _ = lexer.expand_word(text, &env);
    let _ = lexer.expand_words(text, &env);
    if let Ok(m) = dockerignore::Matcher::parse(text) {
        for line in text.lines().take(16) {
            let _ = m.matches(line);
        }
    }
    if let Ok(doc) = parse(text) {
        for n in &doc.nodes {
            let _ = n.dump();
            if let Ok(i) = instruction(n) {
                let _ = serde_json::to_string(&i);
            }
            if let Args::Text(t) = &n.args {
                let _ = lexer.expand_words(t, &env);
            }
        }
        let _ = stages(&doc);
        let _ = json::document_json(&doc);
        let _ = lint::lint(&doc, &lint::LintContext::default());
    }
}
