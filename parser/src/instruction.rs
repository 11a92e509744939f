//! Typed instructions: a [`Node`] checked and split into its parts (still unexpanded).

use crate::ast::{Args, Node};
use crate::error::ParseError;
use crate::shell::split_raw_words;

/// A command in shell form (run through the stage's `SHELL`) or exec form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Shell form: the text handed to the shell.
    Shell(String),
    /// Exec form: the argument vector.
    Exec(Vec<String>),
}

/// One instruction with its arguments split out. Words are not expanded yet: the builder
/// expands them in the stage's ARG/ENV scope.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Instruction {
    /// `FROM [--platform=P] IMAGE [AS NAME]`
    From {
        /// The image (or stage name, or `scratch`).
        image: String,
        /// `--platform`, if given.
        platform: Option<String>,
        /// `AS name`, lower-cased.
        alias: Option<String>,
    },
    /// `RUN [flags] COMMAND`
    Run {
        /// The command.
        command: Command,
        /// `--mount`, `--network`, `--security` flags as `(name, value)`.
        flags: Vec<(String, String)>,
    },
    /// `CMD`
    Cmd(Command),
    /// `ENTRYPOINT`
    Entrypoint(Command),
    /// `SHELL ["exe", "arg"]`
    Shell(Vec<String>),
    /// `ENV k=v ...` (raw pairs)
    Env(Vec<(String, String)>),
    /// `LABEL k=v ...` (raw pairs)
    Label(Vec<(String, String)>),
    /// `ARG name[=default] ...`
    Arg(Vec<(String, Option<String>)>),
    /// `EXPOSE port[/proto] ...`
    Expose(Vec<String>),
    /// `WORKDIR path`
    Workdir(String),
    /// `USER user[:group]`
    User(String),
    /// `VOLUME path ...`
    Volume(Vec<String>),
    /// `STOPSIGNAL signal`
    StopSignal(String),
    /// `MAINTAINER name`
    Maintainer(String),
    /// `COPY [--from] [--chown] [--chmod] src... dest` (and `ADD`, with `add` set)
    Copy {
        /// Whether this is `ADD`.
        add: bool,
        /// Source paths (or stage paths with `--from`).
        sources: Vec<String>,
        /// Destination.
        dest: String,
        /// All flags as `(name, value)`.
        flags: Vec<(String, String)>,
    },
    /// An instruction kiln parses but does not type yet (HEALTHCHECK, ONBUILD).
    Other(Node),
}

fn err(node: &Node, msg: impl Into<String>) -> ParseError {
    ParseError::new(node.start, msg)
}

/// Splits `--name=value` flags, rejecting names not in `allowed`.
fn flags(node: &Node, allowed: &[&str]) -> Result<Vec<(String, String)>, ParseError> {
    node.flags
        .iter()
        .map(|f| {
            let body = &f[2..];
            let (name, value) = body.split_once('=').unwrap_or((body, "true"));
            if !allowed.contains(&name) {
                return Err(err(node, format!("unknown flag: {name}")));
            }
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

fn shell_text(node: &Node) -> &str {
    match &node.args {
        Args::Shell(s) => s,
        Args::Json(_) => "",
    }
}

fn command(node: &Node) -> Command {
    match &node.args {
        Args::Shell(s) => Command::Shell(s.clone()),
        Args::Json(v) => Command::Exec(v.clone()),
    }
}

fn require_args(node: &Node, min: usize, words: &[String]) -> Result<(), ParseError> {
    if words.len() < min {
        let what = if min == 1 {
            "at least one argument".to_string()
        } else {
            format!("at least {min} arguments")
        };
        return Err(err(node, format!("{} requires {what}", node.keyword)));
    }
    Ok(())
}

fn json_or_words(node: &Node, escape: char) -> Vec<String> {
    match &node.args {
        Args::Json(v) => v.clone(),
        Args::Shell(s) => split_raw_words(s, escape),
    }
}

/// Parses `KEY=value ...` (or the legacy `KEY value` form) as BuildKit does.
fn name_values(node: &Node, escape: char) -> Result<Vec<(String, String)>, ParseError> {
    let text = shell_text(node);
    let words = split_raw_words(text, escape);
    require_args(node, 1, &words)?;
    if !words[0].contains('=') {
        let value = text.trim_start()[words[0].len()..].trim();
        if value.is_empty() {
            return Err(err(
                node,
                format!("{} must have two arguments", node.keyword),
            ));
        }
        return Ok(vec![(words[0].clone(), value.to_string())]);
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(err(
                node,
                format!("{} names can not be blank", node.keyword),
            )),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(err(
                node,
                format!("syntax error - can't find = in {w:?}; must be of the form: name=value"),
            )),
        })
        .collect()
}

/// Types a node. `escape` is the file's escape character.
pub fn instruction(node: &Node, escape: char) -> Result<Instruction, ParseError> {
    let kw = node.keyword.as_str();
    let no_flags = |node: &Node| flags(node, &[]).map(|_| ());
    Ok(match kw {
        "FROM" => {
            let f = flags(node, &["platform"])?;
            let words = split_raw_words(shell_text(node), escape);
            let (image, alias) = match words.as_slice() {
                [image] => (image.clone(), None),
                [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (image.clone(), Some(name.to_ascii_lowercase()))
                }
                _ => return Err(err(node, "FROM requires either one or three arguments")),
            };
            let platform = f.into_iter().find(|(k, _)| k == "platform").map(|(_, v)| v);
            Instruction::From {
                image,
                platform,
                alias,
            }
        }
        "RUN" => {
            let flags = flags(node, &["mount", "network", "security"])?;
            let command = command(node);
            if matches!(&command, Command::Shell(s) if s.is_empty()) {
                return Err(err(node, "RUN requires at least one argument"));
            }
            Instruction::Run { command, flags }
        }
        "CMD" | "ENTRYPOINT" => {
            no_flags(node)?;
            let c = command(node);
            if kw == "CMD" {
                Instruction::Cmd(c)
            } else {
                Instruction::Entrypoint(c)
            }
        }
        "SHELL" => {
            no_flags(node)?;
            match &node.args {
                Args::Json(v) if !v.is_empty() => Instruction::Shell(v.clone()),
                _ => return Err(err(node, "SHELL requires the arguments to be in JSON form")),
            }
        }
        "ENV" => {
            no_flags(node)?;
            Instruction::Env(name_values(node, escape)?)
        }
        "LABEL" => {
            no_flags(node)?;
            Instruction::Label(name_values(node, escape)?)
        }
        "ARG" => {
            no_flags(node)?;
            let words = split_raw_words(shell_text(node), escape);
            require_args(node, 1, &words)?;
            Instruction::Arg(
                words
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    })
                    .collect(),
            )
        }
        "EXPOSE" | "VOLUME" => {
            no_flags(node)?;
            let words = json_or_words(node, escape);
            require_args(node, 1, &words)?;
            if kw == "EXPOSE" {
                Instruction::Expose(words)
            } else {
                Instruction::Volume(words)
            }
        }
        "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
            no_flags(node)?;
            let text = shell_text(node).to_string();
            if text.is_empty() {
                return Err(err(node, format!("{kw} requires exactly one argument")));
            }
            match kw {
                "WORKDIR" => Instruction::Workdir(text),
                "USER" => Instruction::User(text),
                "STOPSIGNAL" => Instruction::StopSignal(text),
                _ => Instruction::Maintainer(text),
            }
        }
        "COPY" | "ADD" => {
            let allowed: &[&str] = if kw == "COPY" {
                &["from", "chown", "chmod", "link", "parents", "exclude"]
            } else {
                &[
                    "chown",
                    "chmod",
                    "link",
                    "checksum",
                    "keep-git-dir",
                    "exclude",
                    "unpack",
                ]
            };
            let flags = flags(node, allowed)?;
            let mut words = json_or_words(node, escape);
            require_args(node, 2, &words)?;
            let dest = words.pop().expect("at least two words");
            Instruction::Copy {
                add: kw == "ADD",
                sources: words,
                dest,
                flags,
            }
        }
        _ => Instruction::Other(node.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::parse_line;

    fn ins(s: &str) -> Result<Instruction, ParseError> {
        instruction(&parse_line(s).unwrap(), '\\')
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            ins("ENV A=1 B=\"x y\"").unwrap(),
            Instruction::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"x y\"".into())
            ])
        );
        assert_eq!(
            ins("ENV A  hello world").unwrap(),
            Instruction::Env(vec![("A".into(), "hello world".into())])
        );
        assert!(
            ins("ENV A")
                .unwrap_err()
                .to_string()
                .contains("two arguments")
        );
        assert!(
            ins("ENV A=1 B")
                .unwrap_err()
                .to_string()
                .contains("can't find =")
        );
    }

    #[test]
    fn from_copy_and_flags() {
        assert_eq!(
            ins("FROM --platform=linux/amd64 busybox AS Build").unwrap(),
            Instruction::From {
                image: "busybox".into(),
                platform: Some("linux/amd64".into()),
                alias: Some("build".into())
            }
        );
        assert!(ins("FROM a b").is_err());
        assert!(
            ins("RUN --bogus=1 true")
                .unwrap_err()
                .to_string()
                .contains("unknown flag: bogus")
        );
        match ins("COPY --chmod=644 a b /dst/").unwrap() {
            Instruction::Copy {
                sources,
                dest,
                flags,
                add,
            } => {
                assert_eq!(
                    (sources, dest, add),
                    (vec!["a".into(), "b".into()], "/dst/".into(), false)
                );
                assert_eq!(flags, [("chmod".to_string(), "644".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(ins("COPY onlyone").is_err());
        assert_eq!(
            ins("CMD [\"sh\"]").unwrap(),
            Instruction::Cmd(Command::Exec(vec!["sh".into()]))
        );
        assert_eq!(
            ins("CMD echo hi").unwrap(),
            Instruction::Cmd(Command::Shell("echo hi".into()))
        );
    }
}
