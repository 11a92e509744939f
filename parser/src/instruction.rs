//! Typed instructions: a [`Node`] checked and split into its parts, values still unexpanded
//! (the builder expands them in the stage's ARG/ENV scope).

use std::time::Duration;

use crate::ast::{Args, Heredoc, KeyValue, Node};
use crate::error::ParseError;
use crate::flags::{Flags, Kind, Mount, parse_chmod, parse_duration, parse_mount};
use crate::node::KEYWORDS;

/// A command in shell form (run through the stage's `SHELL`) or exec form.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Shell form: the text handed to the shell.
    Shell(String),
    /// Exec form: the argument vector.
    Exec(Vec<String>),
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct From {
    /// The image, a stage name, or `scratch`.
    pub image: String,
    /// `--platform`.
    pub platform: Option<String>,
    /// `AS name`, lower-cased.
    pub alias: Option<String>,
}

/// `RUN --network` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// `default`.
    Default,
    /// `none`.
    None,
    /// `host`.
    Host,
}

/// `RUN --security` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// `sandbox` (the default).
    Sandbox,
    /// `insecure`: all capabilities.
    Insecure,
}

/// `RUN [--mount ...] [--network ...] [--security ...] COMMAND`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    /// The command.
    pub command: Command,
    /// `--mount`s.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Option<NetworkMode>,
    /// `--security`.
    pub security: Option<Security>,
    /// Heredocs opened on the line (their bodies are files or the script).
    pub heredocs: Vec<Heredoc>,
}

/// `COPY`/`ADD` with every flag BuildKit knows.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct CopySpec {
    /// Sources (context paths, stage paths with `--from`, URLs for ADD, `<<EOF` heredocs).
    pub sources: Vec<String>,
    /// Destination.
    pub dest: String,
    /// `--from` (COPY).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod` (raw; checked when it holds no variable).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// `--checksum` (ADD).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD).
    pub keep_git_dir: bool,
    /// `--unpack` (ADD).
    pub unpack: Option<bool>,
    /// Heredocs used as sources.
    pub heredocs: Vec<Heredoc>,
}

/// `HEALTHCHECK`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Cmd {
        /// The test, Docker-style: `["CMD", ...]` or `["CMD-SHELL", "..."]`.
        test: Vec<String>,
        /// `--interval`.
        #[serde(serialize_with = "nanos")]
        interval: Option<Duration>,
        /// `--timeout`.
        #[serde(serialize_with = "nanos")]
        timeout: Option<Duration>,
        /// `--start-period`.
        #[serde(serialize_with = "nanos")]
        start_period: Option<Duration>,
        /// `--start-interval`.
        #[serde(serialize_with = "nanos")]
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// One `ARG` declaration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ArgDecl {
    /// The name.
    pub name: String,
    /// The default, unexpanded (quotes in place).
    pub default: Option<String>,
}

/// One instruction with its arguments split out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Instruction {
    /// `FROM`.
    From(From),
    /// `RUN`.
    Run(Run),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `SHELL ["exe", "arg"]`.
    Shell(Vec<String>),
    /// `ENV` pairs (raw).
    Env(Vec<KeyValue>),
    /// `LABEL` pairs (raw).
    Label(Vec<KeyValue>),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `EXPOSE port[/proto] ...`.
    Expose(Vec<String>),
    /// `WORKDIR path`.
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `VOLUME path ...`.
    Volume(Vec<String>),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `MAINTAINER name` (deprecated).
    Maintainer(String),
    /// `COPY`.
    Copy(CopySpec),
    /// `ADD`.
    Add(CopySpec),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD INSTRUCTION`: the trigger, checked, kept as written.
    #[serde(serialize_with = "trigger_text")]
    Onbuild(Box<Node>),
}

impl Instruction {
    /// The words of this instruction that undergo variable expansion, per the Dockerfile
    /// reference (ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, and
    /// ARG defaults; RUN, CMD and ENTRYPOINT are left to the shell). Expanding these with
    /// [`crate::Lexer::expand_word_tracked`] gives exactly the variables a step depends on,
    /// which is what its cache key must include.
    pub fn expandable_words(&self) -> Vec<String> {
        match self {
            Instruction::From(f) => std::iter::once(f.image.clone())
                .chain(f.platform.clone())
                .collect(),
            Instruction::Env(kvs) | Instruction::Label(kvs) => kvs
                .iter()
                .flat_map(|kv| [kv.key.clone(), kv.value.clone()])
                .collect(),
            Instruction::Arg(args) => args.iter().filter_map(|a| a.default.clone()).collect(),
            Instruction::Expose(v) | Instruction::Volume(v) => v.clone(),
            Instruction::Workdir(w) | Instruction::User(w) | Instruction::StopSignal(w) => {
                vec![w.clone()]
            }
            Instruction::Copy(s) | Instruction::Add(s) => {
                let mut v: Vec<String> = s
                    .sources
                    .iter()
                    .filter(|x| !x.starts_with("<<"))
                    .cloned()
                    .collect();
                v.push(s.dest.clone());
                v.extend(s.chown.clone());
                v.extend(s.chmod.clone());
                v.extend(s.from.clone());
                v.extend(s.checksum.clone());
                v.extend(s.exclude.iter().cloned());
                v
            }
            Instruction::Run(r) => r
                .mounts
                .iter()
                .flat_map(|m| {
                    [
                        m.target.clone(),
                        m.source.clone(),
                        m.from.clone(),
                        m.id.clone(),
                    ]
                })
                .flatten()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The instruction keyword, upper-case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From(_) => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Shell(_) => "SHELL",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Arg(_) => "ARG",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::User(_) => "USER",
            Instruction::Volume(_) => "VOLUME",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild(_) => "ONBUILD",
        }
    }
}

fn trigger_text<S: serde::Serializer>(n: &Node, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&n.original)
}

/// Durations as Docker's config stores them: nanoseconds.
fn nanos<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_nanos() as u64),
        None => s.serialize_none(),
    }
}

/// The closest known keyword to a misspelt one, if it is close enough to suggest.
pub fn suggest_keyword(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_uppercase();
    KEYWORDS
        .iter()
        .map(|k| (levenshtein(&w, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min()
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn command(args: &Args) -> Command {
    match args {
        Args::Json(v) => Command::Exec(v.clone()),
        Args::Text(s) => Command::Shell(s.clone()),
        _ => Command::Exec(Vec::new()),
    }
}

fn words(args: &Args) -> Vec<String> {
    match args {
        Args::Json(v) | Args::Words(v) => v.clone(),
        Args::Text(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn text(args: &Args) -> String {
    match args {
        Args::Text(s) => s.clone(),
        _ => String::new(),
    }
}

/// A valid stage name: lower-case letter first, then letters, digits, `-`, `_`, `.`.
pub fn valid_stage_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
}

/// Types a node.
pub fn instruction(node: &Node) -> Result<Instruction, ParseError> {
    let err = |m: String| ParseError::new(node.start, m);
    let kw = node.keyword.as_str();
    let flags = |spec: &[(&str, Kind)]| Flags::parse(&node.flags, spec).map_err(err);
    let exactly_one = |what: &str| -> Result<String, ParseError> {
        let t = text(&node.args);
        if t.is_empty() {
            return Err(err(format!("{what} requires exactly one argument")));
        }
        Ok(t)
    };
    Ok(match kw {
        "FROM" => {
            let f = flags(&[("platform", Kind::Str)])?;
            let w = words(&node.args);
            let (image, alias) = match w.as_slice() {
                [image] => (image.clone(), None),
                [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let lower = name.to_ascii_lowercase();
                    if !valid_stage_name(&lower) {
                        return Err(err(format!(
                            "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                        )));
                    }
                    (image.clone(), Some(lower))
                }
                _ => return Err(err("FROM requires either one or three arguments".into())),
            };
            Instruction::From(From {
                image,
                platform: f.string("platform"),
                alias,
            })
        }
        "RUN" => {
            let f = flags(&[
                ("mount", Kind::List),
                ("network", Kind::Str),
                ("security", Kind::Str),
            ])?;
            let command = command(&node.args);
            if matches!(&command, Command::Exec(v) if v.is_empty()) && node.heredocs.is_empty() {
                return Err(err("RUN requires at least one argument".into()));
            }
            let mounts = f
                .list("mount")
                .iter()
                .map(|m| parse_mount(m))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            let network = match f.string("network").as_deref() {
                None => None,
                Some("default") => Some(NetworkMode::Default),
                Some("none") => Some(NetworkMode::None),
                Some("host") => Some(NetworkMode::Host),
                Some(other) => return Err(err(format!("unsupported network mode {other:?}"))),
            };
            let security = match f.string("security").as_deref() {
                None => None,
                Some("sandbox") => Some(Security::Sandbox),
                Some("insecure") => Some(Security::Insecure),
                Some(other) => return Err(err(format!("unsupported security mode {other:?}"))),
            };
            Instruction::Run(Run {
                command,
                mounts,
                network,
                security,
                heredocs: node.heredocs.clone(),
            })
        }
        "CMD" | "ENTRYPOINT" => {
            flags(&[])?;
            let c = command(&node.args);
            if kw == "CMD" {
                Instruction::Cmd(c)
            } else {
                Instruction::Entrypoint(c)
            }
        }
        "SHELL" => {
            flags(&[])?;
            match &node.args {
                Args::Json(v) => Instruction::Shell(v.clone()),
                _ => return Err(err("SHELL requires the arguments to be in JSON form".into())),
            }
        }
        "ENV" | "LABEL" => {
            flags(&[])?;
            let Args::KeyValues(kvs) = &node.args else {
                return Err(err(format!("{kw} requires at least one argument")));
            };
            if kvs.iter().any(|kv| kv.key.is_empty()) {
                return Err(err(format!("{kw} names can not be blank")));
            }
            if kw == "ENV" {
                Instruction::Env(kvs.clone())
            } else {
                Instruction::Label(kvs.clone())
            }
        }
        "ARG" => {
            flags(&[])?;
            let w = words(&node.args);
            if w.is_empty() {
                return Err(err("ARG requires at least one argument".into()));
            }
            let decls = w
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some(("", _)) => Err(err("ARG names can not be blank".into())),
                    Some((k, v)) => Ok(ArgDecl {
                        name: k.into(),
                        default: Some(v.into()),
                    }),
                    None => Ok(ArgDecl {
                        name: w,
                        default: None,
                    }),
                })
                .collect::<Result<_, _>>()?;
            Instruction::Arg(decls)
        }
        "EXPOSE" | "VOLUME" => {
            flags(&[])?;
            let w = words(&node.args);
            if w.is_empty() {
                return Err(err(format!("{kw} requires at least one argument")));
            }
            if kw == "EXPOSE" {
                Instruction::Expose(w)
            } else {
                Instruction::Volume(w)
            }
        }
        "WORKDIR" => {
            flags(&[])?;
            Instruction::Workdir(exactly_one("WORKDIR")?)
        }
        "USER" => {
            flags(&[])?;
            Instruction::User(exactly_one("USER")?)
        }
        "STOPSIGNAL" => {
            flags(&[])?;
            Instruction::StopSignal(exactly_one("STOPSIGNAL")?)
        }
        "MAINTAINER" => {
            flags(&[])?;
            Instruction::Maintainer(exactly_one("MAINTAINER")?)
        }
        "COPY" | "ADD" => {
            let spec: &[(&str, Kind)] = if kw == "COPY" {
                &[
                    ("from", Kind::Str),
                    ("chown", Kind::Str),
                    ("chmod", Kind::Str),
                    ("link", Kind::Bool),
                    ("parents", Kind::Bool),
                    ("exclude", Kind::List),
                ]
            } else {
                &[
                    ("chown", Kind::Str),
                    ("chmod", Kind::Str),
                    ("link", Kind::Bool),
                    ("exclude", Kind::List),
                    ("checksum", Kind::Str),
                    ("keep-git-dir", Kind::Bool),
                    ("unpack", Kind::Bool),
                ]
            };
            let f = flags(spec)?;
            let mut w = words(&node.args);
            if w.len() < 2 {
                return Err(err(format!(
                    "{kw} requires at least two arguments, but only {} provided",
                    w.len()
                )));
            }
            let dest = w.pop().expect("two words");
            let chmod = f.string("chmod");
            if let Some(c) = &chmod
                && !c.contains('$')
            {
                parse_chmod(c).map_err(err)?;
            }
            let spec = CopySpec {
                sources: w,
                dest,
                from: f.string("from"),
                chown: f.string("chown"),
                chmod,
                link: f.bool("link").unwrap_or(false),
                parents: f.bool("parents").unwrap_or(false),
                exclude: f.list("exclude"),
                checksum: f.string("checksum"),
                keep_git_dir: f.bool("keep-git-dir").unwrap_or(false),
                unpack: f.bool("unpack"),
                heredocs: node.heredocs.clone(),
            };
            if kw == "COPY" {
                Instruction::Copy(spec)
            } else {
                Instruction::Add(spec)
            }
        }
        "HEALTHCHECK" => healthcheck(node)?,
        "ONBUILD" => {
            flags(&[])?;
            let Args::Nested(inner) = &node.args else {
                return Err(err("ONBUILD requires at least one argument".into()));
            };
            if matches!(inner.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                return Err(err(format!(
                    "{} isn't allowed as an ONBUILD trigger",
                    inner.keyword
                )));
            }
            instruction(inner)?;
            Instruction::Onbuild(inner.clone())
        }
        other => {
            let hint = suggest_keyword(other)
                .map(|k| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            let written = node
                .original
                .split(char::is_whitespace)
                .next()
                .unwrap_or(other);
            return Err(err(format!("unknown instruction {written:?}{hint}")));
        }
    })
}

fn healthcheck(node: &Node) -> Result<Instruction, ParseError> {
    let err = |m: String| ParseError::new(node.start, m);
    let f = Flags::parse(
        &node.flags,
        &[
            ("interval", Kind::Str),
            ("timeout", Kind::Str),
            ("start-period", Kind::Str),
            ("start-interval", Kind::Str),
            ("retries", Kind::Str),
        ],
    )
    .map_err(err)?;
    let Args::Healthcheck { kind, command } = &node.args else {
        return Err(err("HEALTHCHECK requires an argument".into()));
    };
    match kind.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !matches!(**command, Args::None) || !node.flags.is_empty() {
                return Err(err("HEALTHCHECK NONE takes no arguments".into()));
            }
            Ok(Instruction::Healthcheck(Healthcheck::None))
        }
        "CMD" => {
            let test = match &**command {
                Args::Json(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
                Args::Text(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                _ => return Err(err("Missing command after HEALTHCHECK CMD".into())),
            };
            let dur = |name: &str| -> Result<Option<Duration>, ParseError> {
                let Some(v) = f.string(name) else {
                    return Ok(None);
                };
                let d = parse_duration(&v).map_err(err)?;
                if !d.is_zero() && d < Duration::from_millis(1) {
                    return Err(err(format!("Interval {name:?} cannot be less than 1ms")));
                }
                Ok(Some(d))
            };
            let retries = match f.string("retries") {
                None => None,
                Some(r) => Some(r.parse::<u32>().map_err(|_| {
                    err(format!(
                        "invalid retries value {r:?}: must be a non-negative integer"
                    ))
                })?),
            };
            Ok(Instruction::Healthcheck(Healthcheck::Cmd {
                test,
                interval: dur("interval")?,
                timeout: dur("timeout")?,
                start_period: dur("start-period")?,
                start_interval: dur("start-interval")?,
                retries,
            }))
        }
        other => Err(err(format!(
            "Unknown type {other:?} in HEALTHCHECK (try CMD)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_line;

    fn ins(s: &str) -> Instruction {
        instruction(&parse_line(s).unwrap()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn copy_and_add_flags() {
        let Instruction::Copy(c) = ins(
            "COPY --from=build --chown=app:app --chmod=u+x --link --parents --exclude=*.md --exclude=tmp a b /dst/",
        ) else {
            panic!()
        };
        assert_eq!(c.sources, ["a", "b"]);
        assert_eq!(c.dest, "/dst/");
        assert_eq!(
            (c.from.as_deref(), c.chown.as_deref(), c.chmod.as_deref()),
            (Some("build"), Some("app:app"), Some("u+x"))
        );
        assert!(c.link && c.parents);
        assert_eq!(c.exclude, ["*.md", "tmp"]);
        let Instruction::Add(a) = ins(
            "ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false --link=false https://x/y.tgz /",
        ) else {
            panic!()
        };
        assert_eq!(
            (a.checksum.as_deref(), a.keep_git_dir, a.unpack, a.link),
            (Some("sha256:abc"), true, Some(false), false)
        );
        let Instruction::Copy(c) = ins("COPY [\"a b\", \"/c d/\"]") else {
            panic!()
        };
        assert_eq!(
            (c.sources, c.dest),
            (vec!["a b".to_string()], "/c d/".to_string())
        );
    }

    #[test]
    fn from_run_healthcheck_and_others() {
        assert_eq!(
            ins("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build"),
            Instruction::From(From {
                image: "golang:1.22".into(),
                platform: Some("$BUILDPLATFORM".into()),
                alias: Some("build".into())
            })
        );
        let Instruction::Run(r) = ins(
            "RUN --mount=type=secret,id=npm,target=/root/.npmrc --network=host --security=sandbox npm ci",
        ) else {
            panic!()
        };
        assert_eq!(
            (r.network, r.security, r.mounts.len()),
            (Some(NetworkMode::Host), Some(Security::Sandbox), 1)
        );
        assert_eq!(r.command, Command::Shell("npm ci".into()));
        let Instruction::Healthcheck(Healthcheck::Cmd {
            test,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        }) = ins(
            "HEALTHCHECK --interval=30s --timeout=3s --start-period=1m --start-interval=500ms --retries=4 CMD [\"curl\", \"-f\", \"http://x/\"]",
        )
        else {
            panic!()
        };
        assert_eq!(test, ["CMD", "curl", "-f", "http://x/"]);
        assert_eq!(
            (interval, timeout, start_period, start_interval, retries),
            (
                Some(Duration::from_secs(30)),
                Some(Duration::from_secs(3)),
                Some(Duration::from_secs(60)),
                Some(Duration::from_millis(500)),
                Some(4)
            )
        );
        assert_eq!(
            ins("HEALTHCHECK NONE"),
            Instruction::Healthcheck(Healthcheck::None)
        );
        assert_eq!(
            ins("ARG a=1 b"),
            Instruction::Arg(vec![
                ArgDecl {
                    name: "a".into(),
                    default: Some("1".into())
                },
                ArgDecl {
                    name: "b".into(),
                    default: None
                }
            ])
        );
        assert_eq!(
            ins("SHELL [\"pwsh\", \"-c\"]"),
            Instruction::Shell(vec!["pwsh".into(), "-c".into()])
        );
        assert_eq!(
            ins("STOPSIGNAL SIGTERM"),
            Instruction::StopSignal("SIGTERM".into())
        );
        assert!(
            matches!(ins("ONBUILD COPY . /app"), Instruction::Onbuild(n) if n.keyword == "COPY")
        );
        assert_eq!(
            ins("ENTRYPOINT [\"/init\"]"),
            Instruction::Entrypoint(Command::Exec(vec!["/init".into()]))
        );
    }

    #[test]
    fn words_that_expand() {
        let w = ins("COPY --chown=$U --from=$S $SRC $DST").expandable_words();
        assert_eq!(w, ["$SRC", "$DST", "$U", "$S"]);
        assert!(
            ins("RUN echo $X").expandable_words().is_empty(),
            "RUN leaves $X to the shell"
        );
        assert_eq!(suggest_keyword("WORKDRI"), Some("WORKDIR"));
        assert_eq!(suggest_keyword("XYZZY"), None);
    }
}
