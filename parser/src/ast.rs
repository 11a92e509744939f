//! The untyped syntax tree: one [`Node`] per instruction, before any expansion, and its
//! conformance rendering ([`Node::dump`]).

use std::fmt::Write as _;

use crate::error::Position;

/// One `KEY=value` (or legacy `KEY value`) pair of `ENV` or `LABEL`, quotes still in place.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyValue {
    /// The key as written.
    pub key: String,
    /// The value as written.
    pub value: String,
    /// True for the legacy `ENV key value` form.
    pub legacy: bool,
}

/// The arguments of an instruction as the parser splits them (see the conformance README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Args {
    /// No arguments.
    None,
    /// Exec (JSON array) form.
    Json(Vec<String>),
    /// The whole rest of the line: shell-form RUN/CMD/ENTRYPOINT/SHELL, and
    /// MAINTAINER/USER/WORKDIR/STOPSIGNAL.
    Text(String),
    /// Whitespace- or shell-word-separated words: FROM, EXPOSE, ARG, shell-form ADD/COPY/VOLUME.
    Words(Vec<String>),
    /// ENV and LABEL pairs.
    KeyValues(Vec<KeyValue>),
    /// HEALTHCHECK: the first word (`CMD`, `NONE`, ...) and the command after it.
    Healthcheck {
        /// `CMD` or `NONE` (as written).
        kind: String,
        /// The command (JSON, text, or none).
        command: Box<Args>,
    },
    /// ONBUILD: the instruction it wraps.
    Nested(Box<Node>),
    /// An instruction keyword the parser does not know (rejected by the typed layer).
    Unknown,
}

/// A heredoc attached to an instruction (`RUN <<EOF`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body, one `\n` after each line.
    pub content: String,
    /// False when the delimiter was quoted: no expansion in the body.
    pub expand: bool,
    /// True for `<<-`: leading tabs were stripped from the body.
    pub chomp: bool,
    /// A file descriptor number written before `<<` (`3<<EOF`), if any.
    pub fd: Option<u32>,
}

/// One instruction (with its continuation lines and heredoc bodies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The keyword, upper-case (`RUN`, `COPY`, ...), as written otherwise.
    pub keyword: String,
    /// Leading `--name[=value]` flags, quotes removed.
    pub flags: Vec<String>,
    /// The arguments.
    pub args: Args,
    /// Heredocs opened on the instruction line, in order.
    pub heredocs: Vec<Heredoc>,
    /// Where the keyword starts.
    pub start: Position,
    /// The last physical line of the instruction (continuations and heredocs included).
    pub end_line: usize,
    /// The instruction line as written, continuation lines joined, trimmed.
    pub original: String,
}

impl Node {
    /// Renders the node as BuildKit's parser tests print it: `(run "echo hi")`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        self.dump_into(&mut out);
        out
    }

    fn dump_into(&self, out: &mut String) {
        out.push('(');
        out.push_str(&self.keyword.to_lowercase());
        if !self.flags.is_empty() {
            out.push_str(" [");
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            out.push_str(&flags.join(" "));
            out.push(']');
        }
        dump_args(&self.args, out);
        out.push(')');
    }
}

fn dump_args(args: &Args, out: &mut String) {
    let mut q = |s: &str| {
        out.push(' ');
        out.push_str(&go_quote(s));
    };
    match args {
        Args::None => {}
        Args::Json(v) | Args::Words(v) => v.iter().for_each(|s| q(s)),
        Args::Text(s) => q(s),
        Args::KeyValues(kvs) => {
            for kv in kvs {
                q(&kv.key);
                q(&kv.value);
                q(if kv.legacy { "" } else { "=" });
            }
        }
        Args::Healthcheck { kind, command } => {
            q(kind);
            dump_args(command, out);
        }
        Args::Nested(n) => {
            out.push(' ');
            n.dump_into(out);
        }
        Args::Unknown => q(""),
    }
}

/// Quotes a string as Go's `strconv.Quote` does.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Go's `unicode.IsPrint`: letters, marks, numbers, punctuation, symbols and ASCII space.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_whitespace() || c.is_control() {
        return false;
    }
    // Format characters, private use, surrogates and unassigned code points are not
    // printable; approximate the Unicode categories with the ranges that matter.
    let u = c as u32;
    let format = matches!(u, 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb);
    let private = matches!(u, 0xe000..=0xf8ff | 0xf0000..=0xffffd | 0x100000..=0x10fffd);
    let nonchar = (u & 0xfffe) == 0xfffe || (0xfdd0..=0xfdef).contains(&u);
    !(format || private || nonchar)
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

/// A non-fatal finding of the parser (e.g. an empty continuation line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// BuildKit's rule name (`NoEmptyContinuation`).
    pub rule: &'static str,
    /// What was found.
    pub message: String,
    /// Where.
    pub line: usize,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Document {
    /// The parser directives.
    pub directives: Directives,
    /// The instructions in order.
    pub nodes: Vec<Node>,
    /// Parser warnings.
    pub warnings: Vec<Warning>,
}

impl Document {
    /// The first and last line of the instructions (1-based), if any.
    pub fn range(&self) -> Option<(usize, usize)> {
        Some((self.nodes.first()?.start.line, self.nodes.last()?.end_line))
    }
}

#[cfg(test)]
mod tests {
    use super::go_quote;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\t\n\u{0}\u{7f}"), r#""\t\n\x00\x7f""#);
        assert_eq!(go_quote("♥ 한국어"), "\"♥ 한국어\"");
        assert_eq!(go_quote("\u{a0}\u{200b}"), r#""\u00a0\u200b""#);
    }
}
