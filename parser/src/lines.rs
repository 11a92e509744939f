//! From text to [`Node`]s: directives, comments, continuation lines, flags and exec form.

use crate::ast::{Args, Directives, Document, Node};
use crate::error::{ParseError, Position};

/// Instructions whose arguments may be a JSON array (exec form).
const JSON_FORM: &[&str] = &["RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"];

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

/// Parses Dockerfile text into a [`Document`].
pub fn parse(src: &str) -> Result<Document, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = src.lines().collect();
    let (directives, first) = read_directives(&lines)?;
    let escape = directives.escape;
    let mut nodes = Vec::new();
    let mut i = first;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = Position {
            line: i + 1,
            col: line.len() - trimmed.len() + 1,
        };
        // Join continuation lines; comment lines inside a continuation are dropped.
        let mut text = String::new();
        let mut cur = trimmed;
        loop {
            match strip_continuation(cur, escape) {
                Some(head) => {
                    text.push_str(head);
                    i += 1;
                    while i < lines.len() && lines[i].trim_start().starts_with('#') {
                        i += 1;
                    }
                    if i >= lines.len() {
                        break;
                    }
                    cur = lines[i];
                }
                None => {
                    text.push_str(cur);
                    i += 1;
                    break;
                }
            }
        }
        nodes.push(parse_instruction_at(&text, start, i)?);
    }
    Ok(Document { directives, nodes })
}

/// Parses a single instruction line (as `docker import --change` takes it).
pub fn parse_line(text: &str) -> Result<Node, ParseError> {
    let trimmed = text.trim_start();
    let start = Position {
        line: 1,
        col: text.len() - trimmed.len() + 1,
    };
    parse_instruction_at(trimmed, start, 1)
}

/// If `line` ends with the escape character (ignoring trailing blanks), the part before it.
fn strip_continuation(line: &str, escape: char) -> Option<&str> {
    let t = line.trim_end();
    let head = t.strip_suffix(escape)?;
    // An escaped escape character at the end is not a continuation.
    let run = head.chars().rev().take_while(|&c| c == escape).count();
    (run % 2 == 0).then_some(head)
}

fn read_directives(lines: &[&str]) -> Result<(Directives, usize), ParseError> {
    let mut d = Directives::default();
    let mut seen = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(body) = line.trim_start().strip_prefix('#') else {
            return Ok((d, n));
        };
        let Some((key, value)) = body.split_once('=') else {
            return Ok((d, n));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Ok((d, n));
        }
        let pos = Position {
            line: n + 1,
            col: 1,
        };
        if seen.contains(&key) {
            return Err(ParseError::new(
                pos,
                format!("only one {key} parser directive can be used"),
            ));
        }
        match key.as_str() {
            "escape" => {
                d.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError::new(
                            pos,
                            format!("invalid escape token '{value}' does not match ` or \\"),
                        ));
                    }
                }
            }
            "syntax" => d.syntax = Some(value.to_string()),
            "check" => d.check = Some(value.to_string()),
            // Unknown directives are comments, and end the directive block.
            _ => return Ok((d, n)),
        }
        seen.push(key);
    }
    Ok((d, lines.len()))
}

fn parse_instruction_at(text: &str, start: Position, next_line: usize) -> Result<Node, ParseError> {
    let (word, rest) = match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    };
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(ParseError::new(
            start,
            format!("unknown instruction: {word}"),
        ));
    }
    let (flags, rest) = split_flags(rest);
    let rest = rest.trim_end();
    let args = if JSON_FORM.contains(&keyword.as_str()) && rest.starts_with('[') {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => Args::Json(v),
            // Not valid JSON: BuildKit falls back to shell form.
            Err(_) => Args::Shell(rest.to_string()),
        }
    } else {
        Args::Shell(rest.to_string())
    };
    Ok(Node {
        keyword,
        flags,
        args,
        start,
        end_line: next_line.max(start.line),
        original: text.trim_end().to_string(),
    })
}

/// Splits leading `--flag[=value]` words off the arguments.
fn split_flags(mut rest: &str) -> (Vec<String>, &str) {
    let mut flags = Vec::new();
    while let Some(after) = rest.strip_prefix("--") {
        if after.is_empty() || after.starts_with(char::is_whitespace) {
            break;
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        flags.push(rest[..end].to_string());
        rest = rest[end..].trim_start();
    }
    (flags, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_comments_and_flags() {
        let doc = parse(
            "# syntax=docker/dockerfile:1\nFROM busybox AS base\n# a comment\nrun --network=none echo a \\\n# inside\n  b\nCMD [\"sh\", \"-c\"]\nCMD [not json\n",
        )
        .unwrap();
        assert_eq!(
            doc.directives.syntax.as_deref(),
            Some("docker/dockerfile:1")
        );
        let k: Vec<&str> = doc.nodes.iter().map(|n| n.keyword.as_str()).collect();
        assert_eq!(k, ["FROM", "RUN", "CMD", "CMD"]);
        let run = &doc.nodes[1];
        assert_eq!(run.flags, ["--network=none"]);
        assert_eq!(run.args, Args::Shell("echo a   b".into()));
        assert_eq!((run.start.line, run.end_line), (4, 6));
        assert_eq!(
            doc.nodes[2].args,
            Args::Json(vec!["sh".into(), "-c".into()])
        );
        assert_eq!(doc.nodes[3].args, Args::Shell("[not json".into()));
    }

    #[test]
    fn escape_directive_changes_the_continuation_character() {
        let doc = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /b\n").unwrap();
        assert_eq!(doc.nodes[1].args, Args::Shell("dir c:\\   /b".into()));
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = parse("FROM x\n\n   FOOBAR y\n").unwrap_err();
        assert_eq!(e.to_string(), "3:4: unknown instruction: FOOBAR");
        let e = parse("# escape=x\nFROM x\n").unwrap_err();
        assert_eq!(e.pos.line, 1);
    }
}
