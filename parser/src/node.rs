//! One logical instruction line to a [`Node`]: keyword, flags, and the argument split each
//! instruction uses (BuildKit's parser layer; no expansion here).

use crate::ast::{Args, KeyValue, Node};
use crate::error::{ParseError, Position};

/// Every instruction keyword BuildKit's Dockerfile frontend knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The whitespace Go's parser splits on (`[ \t\v\f\r]`).
pub(crate) fn is_split_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{b}' | '\u{c}' | '\r')
}

/// Builds the node for one joined instruction line (`text` already trimmed).
pub(crate) fn parse_node(
    text: &str,
    start: Position,
    end_line: usize,
    escape: char,
) -> Result<Node, ParseError> {
    let text = text.trim();
    let (word, rest) = match text.find(is_split_space) {
        Some(i) => (&text[..i], text[i..].trim_start_matches(is_split_space)),
        None => (text, ""),
    };
    let keyword = word.to_ascii_uppercase();
    let (rest, flags) = extract_flags(rest);
    let rest = rest.trim();
    let err = |m: String| ParseError::new(start, m);
    let args = match keyword.as_str() {
        "RUN" | "CMD" | "ENTRYPOINT" | "SHELL" => maybe_json(rest).map_err(err)?,
        "ADD" | "COPY" | "VOLUME" => match json_strings(rest) {
            Some(Ok(v)) => Args::Json(v),
            _ if rest.is_empty() => Args::None,
            _ => Args::Words(split_whitespace(rest)),
        },
        "FROM" | "EXPOSE" => {
            if rest.is_empty() {
                Args::None
            } else {
                Args::Words(split_whitespace(rest))
            }
        }
        "ENV" | "LABEL" => name_values(&keyword, rest, escape).map_err(err)?,
        "ARG" => {
            let words = shell_words(rest, escape);
            if words.is_empty() {
                Args::None
            } else {
                Args::Words(words)
            }
        }
        "MAINTAINER" | "USER" | "WORKDIR" | "STOPSIGNAL" => {
            if rest.is_empty() {
                Args::None
            } else {
                Args::Text(rest.to_string())
            }
        }
        "HEALTHCHECK" => {
            if rest.is_empty() {
                Args::None
            } else {
                let (kind, cmd) = match rest.find(char::is_whitespace) {
                    Some(i) => (&rest[..i], rest[i..].trim()),
                    None => (rest, ""),
                };
                Args::Healthcheck {
                    kind: kind.to_string(),
                    command: Box::new(maybe_json(cmd).map_err(err)?),
                }
            }
        }
        "ONBUILD" => {
            if rest.is_empty() {
                return Err(err("ONBUILD requires at least one argument".into()));
            }
            let inner = parse_node(rest, start, end_line, escape)?;
            Args::Nested(Box::new(inner))
        }
        _ => Args::Unknown,
    };
    Ok(Node {
        keyword,
        flags,
        args,
        heredocs: Vec::new(),
        start,
        end_line,
        original: text.to_string(),
    })
}

/// `[...]` decoded as a JSON array: `None` if it is not JSON at all, `Some(Err)` if it is an
/// array with a non-string element.
fn json_strings(rest: &str) -> Option<Result<Vec<String>, String>> {
    if !rest.starts_with('[') {
        return None;
    }
    let values: Vec<serde_json::Value> = serde_json::from_str(rest).ok()?;
    Some(
        values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(
                    "when using JSON array syntax, arrays must be comprised of strings only"
                        .to_string(),
                ),
            })
            .collect(),
    )
}

/// Exec form if the rest is a JSON array of strings; shell form (the text) otherwise.
fn maybe_json(rest: &str) -> Result<Args, String> {
    match json_strings(rest) {
        Some(Ok(v)) if v.is_empty() => Ok(Args::None),
        Some(Ok(v)) => Ok(Args::Json(v)),
        Some(Err(e)) => Err(e),
        None if rest.is_empty() => Ok(Args::None),
        None => Ok(Args::Text(rest.to_string())),
    }
}

fn split_whitespace(rest: &str) -> Vec<String> {
    rest.split(is_split_space)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Splits leading `--flag` words off (quotes removed, `\` escaping); a bare `--` ends them.
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    let mut flags = Vec::new();
    if !line.starts_with("--") {
        return (line, flags);
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut i = 0;
    loop {
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i + 1 >= chars.len() || chars[i].1 != '-' || chars[i + 1].1 != '-' {
            let at = chars.get(i).map_or(line.len(), |c| c.0);
            return (&line[at..], flags);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut blank_ok = false;
        while i < chars.len() {
            let c = chars[i].1;
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    blank_ok = true;
                }
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if i + 1 < chars.len() {
                        i += 1;
                        word.push(chars[i].1);
                    }
                }
                _ => word.push(c),
            }
            i += 1;
        }
        if word == "--" {
            let at = chars.get(i).map_or(line.len(), |c| c.0);
            return (&line[at..], flags);
        }
        if blank_ok || !word.is_empty() {
            flags.push(word);
        }
    }
}

/// Splits on whitespace outside quotes, keeping quotes and escapes in the words
/// (BuildKit's `parseWords`); an escape character at the very end is dropped.
pub fn shell_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c == escape && quote != Some('\'') {
            // An escape character at the very end of the text is dropped.
            if let Some(n) = chars.next() {
                cur.push(c);
                cur.push(n);
            }
            continue;
        }
        match quote {
            None if c == '"' || c == '\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// ENV/LABEL pairs: `k=v ...`, or the legacy `k value with spaces`.
fn name_values(keyword: &str, rest: &str, escape: char) -> Result<Args, String> {
    let words = shell_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Args::None);
    };
    if !first.contains('=') {
        let mut parts = rest.splitn(2, char::is_whitespace);
        let key = parts.next().unwrap_or_default();
        let value = parts.next().map(|v| v.trim_start()).unwrap_or_default();
        if value.is_empty() {
            return Err(format!("{keyword} must have two arguments"));
        }
        return Ok(Args::KeyValues(vec![KeyValue {
            key: key.into(),
            value: value.into(),
            legacy: true,
        }]));
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => Ok(KeyValue {
                key: k.into(),
                value: v.into(),
                legacy: false,
            }),
            None => Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )),
        })
        .collect::<Result<_, _>>()
        .map(Args::KeyValues)
}
