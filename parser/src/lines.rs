//! From text to [`Node`]s: directives, comments, continuation lines and heredoc bodies.

use crate::ast::{Directives, Document, Heredoc, Node, Warning};
use crate::error::{ParseError, Position};
use crate::heredoc::{allows_heredocs, markers};
use crate::node::parse_node;

/// The longest instruction line accepted, as in BuildKit (64 KiB after joining).
const MAX_LINE: usize = 64 * 1024;

/// Parses Dockerfile text into a [`Document`].
pub fn parse(src: &str) -> Result<Document, ParseError> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = split_lines(src);
    let (directives, first) = read_directives(&lines)?;
    let escape = directives.escape;
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
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
        let mut text = String::new();
        let mut cur = trimmed;
        loop {
            let Some(head) = strip_continuation(cur, escape) else {
                text.push_str(cur);
                i += 1;
                break;
            };
            text.push_str(head);
            i += 1;
            // Comment lines and blank lines inside a continuation are skipped.
            while i < lines.len() {
                let t = lines[i].trim_start();
                if t.starts_with('#') {
                    i += 1;
                } else if t.trim().is_empty() {
                    warnings.push(Warning {
                        rule: "NoEmptyContinuation",
                        message: "Empty continuation line found in: ".to_string() + text.trim(),
                        line: i + 1,
                    });
                    i += 1;
                } else {
                    break;
                }
            }
            if i >= lines.len() {
                break;
            }
            cur = lines[i];
        }
        if text.len() > MAX_LINE {
            return Err(ParseError::new(
                start,
                format!(
                    "dockerfile line greater than max allowed size of {}",
                    MAX_LINE - 1
                ),
            ));
        }
        let mut node = parse_node(&text, start, i, escape)?;
        if allows_heredocs(&node.keyword) {
            for m in markers(&text, escape) {
                let mut content = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let raw = lines[i];
                    i += 1;
                    let body = if m.chomp {
                        raw.trim_start_matches('\t')
                    } else {
                        raw
                    };
                    if body == m.name {
                        closed = true;
                        break;
                    }
                    content.push_str(body);
                    content.push('\n');
                }
                if !closed {
                    return Err(ParseError::new(
                        start,
                        format!(
                            "unterminated heredoc {}: no line with just {:?} below",
                            m.name, m.name
                        ),
                    ));
                }
                node.heredocs.push(Heredoc {
                    name: m.name,
                    content,
                    expand: m.expand,
                    chomp: m.chomp,
                    fd: m.fd,
                });
            }
            node.end_line = i;
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(ParseError::new(
            Position { line: 1, col: 1 },
            "file with no instructions",
        ));
    }
    Ok(Document {
        directives,
        nodes,
        warnings,
    })
}

/// Parses a single instruction line (as `kiln import --change` takes it).
pub fn parse_line(text: &str) -> Result<Node, ParseError> {
    let trimmed = text.trim_start();
    let start = Position {
        line: 1,
        col: text.len() - trimmed.len() + 1,
    };
    parse_node(trimmed, start, 1, '\\')
}

/// Physical lines: split at `\n`, a trailing `\r` removed.
fn split_lines(src: &str) -> Vec<&str> {
    if src.is_empty() {
        return Vec::new();
    }
    let body = src.strip_suffix('\n').unwrap_or(src);
    body.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

/// If `line` continues on the next one, the part before the escape character.
///
/// BuildKit's rule: the line ends with the escape character (then only spaces or tabs), and
/// the character before it is not the escape character, unless the escape is the whole line.
fn strip_continuation(line: &str, escape: char) -> Option<&str> {
    let t = line.trim_end_matches([' ', '\t']);
    let head = t.strip_suffix(escape)?;
    if head.is_empty() || !head.ends_with(escape) {
        Some(head)
    } else {
        None
    }
}

fn read_directives(lines: &[&str]) -> Result<(Directives, usize), ParseError> {
    let mut d = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some((key, value)) = directive(line) else {
            return Ok((d, n));
        };
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
                d.escape = match value.as_str() {
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
            "syntax" => d.syntax = Some(value),
            "check" => d.check = Some(value),
            _ => return Ok((d, n)),
        }
        seen.push(key);
    }
    Ok((d, lines.len()))
}

/// `# name = value` with a name of `[a-zA-Z][a-zA-Z0-9]*`, lower-cased.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.trim_start().strip_prefix('#')?.trim_start();
    let name_len = body
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_alphabetic() || (*i > 0 && c.is_ascii_digit())))
        .map_or(body.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, after) = body.split_at(name_len);
    let value = after.trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::Args;

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
        assert_eq!(run.args, Args::Text("echo a   b".into()));
        assert_eq!((run.start.line, run.end_line), (4, 6));
        assert_eq!(
            doc.nodes[2].args,
            Args::Json(vec!["sh".into(), "-c".into()])
        );
        assert_eq!(doc.nodes[3].args, Args::Text("[not json".into()));
    }

    #[test]
    fn escape_directive_changes_the_continuation_character() {
        let doc = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  /b\n").unwrap();
        assert_eq!(doc.nodes[1].args, Args::Text("dir c:\\   /b".into()));
    }

    #[test]
    fn directives_end_at_the_first_other_line() {
        let doc = parse("#Syntax = a/b\n#  CHECK=skip=all\n\n# escape=`\nFROM x\n").unwrap();
        assert_eq!(doc.directives.syntax.as_deref(), Some("a/b"));
        assert_eq!(doc.directives.check.as_deref(), Some("skip=all"));
        assert_eq!(
            doc.directives.escape, '\\',
            "a directive after a blank line is a comment"
        );
        assert!(
            parse("# escape=\\\n# escape=`\nFROM x\n")
                .unwrap_err()
                .to_string()
                .contains("only one escape")
        );
    }

    #[test]
    fn heredocs_in_run_and_copy() {
        // https://docs.docker.com/reference/dockerfile/#here-documents
        let doc = parse("FROM x\nRUN <<EOF\necho $A\nEOF\nCOPY <<-'A' <<B /dst/\n\tone\n\tA\ntwo\nB\nRUN cat <<X\nX\n").unwrap();
        let run = &doc.nodes[1];
        assert_eq!(run.heredocs[0].content, "echo $A\n");
        assert!(run.heredocs[0].expand);
        assert_eq!((run.start.line, run.end_line), (2, 4));
        let copy = &doc.nodes[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(
            (copy.heredocs[0].content.as_str(), copy.heredocs[0].expand),
            ("one\n", false)
        );
        assert_eq!(copy.heredocs[1].content, "two\n");
        assert_eq!(doc.nodes[3].heredocs[0].content, "");
        let e = parse("FROM x\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "2:1: unterminated heredoc EOF: no line with just \"EOF\" below"
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = parse("# escape=x\nFROM x\n").unwrap_err();
        assert_eq!(e.pos.line, 1);
        assert_eq!(
            parse("").unwrap_err().to_string(),
            "1:1: file with no instructions"
        );
        assert!(
            parse("FROM x\nENV A\n")
                .unwrap_err()
                .to_string()
                .starts_with("2:1: ENV must have two arguments")
        );
    }
}
