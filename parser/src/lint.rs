//! BuildKit's build checks (`docker build --check`), with BuildKit's rule names and messages,
//! and the `# check=skip=...;error=true` directive.
//!
//! Reference: <https://docs.docker.com/reference/build-checks/>.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use crate::ast::{Args, Document, Node};
use crate::dockerignore::Matcher;
use crate::instruction::{Instruction, instruction};
use crate::shell::Lexer;

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// BuildKit's rule name.
    pub rule: &'static str,
    /// The message, as BuildKit words it.
    pub message: String,
    /// 1-based line.
    pub line: usize,
}

impl Finding {
    /// The rule's documentation page.
    pub fn url(&self) -> String {
        // CamelCase to kebab-case, keeping acronyms together (JSONArgs -> json-args).
        let c: Vec<char> = self.rule.chars().collect();
        let mut slug = String::new();
        for (i, ch) in c.iter().enumerate() {
            let prev_lower = i > 0 && c[i - 1].is_ascii_lowercase();
            let acronym_end = i > 0
                && c[i - 1].is_ascii_uppercase()
                && c.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if ch.is_ascii_uppercase() && (prev_lower || acronym_end) {
                slug.push('-');
            }
            slug.push(ch.to_ascii_lowercase());
        }
        format!("https://docs.docker.com/go/dockerfile/rule/{slug}/")
    }
}

/// Every rule kiln checks.
pub const RULES: &[&str] = &[
    "JSONArgsRecommended",
    "StageNameCasing",
    "FromAsCasing",
    "ConsistentInstructionCasing",
    "DuplicateStageName",
    "ReservedStageName",
    "UndefinedVar",
    "UndefinedArgInFrom",
    "InvalidDefaultArgInFrom",
    "MaintainerDeprecated",
    "WorkdirRelativePath",
    "MultipleInstructionsDisallowed",
    "LegacyKeyValueFormat",
    "SecretsUsedInArgOrEnv",
    "NoEmptyContinuation",
    "FromPlatformFlagConstDisallowed",
    "RedundantTargetPlatform",
    "ExposeProtoCasing",
    "ExposeInvalidFormat",
    "CopyIgnoredFile",
];

/// Looks up the environment variable names of a base image by reference.
pub type BaseEnv<'a> = dyn Fn(&str) -> Option<Vec<String>> + 'a;

/// What the checks may consult besides the file.
#[derive(Default)]
pub struct LintContext<'a> {
    /// Environment variable names of a base image, if known (for UndefinedVar).
    pub base_env: Option<&'a BaseEnv<'a>>,
    /// The build's `.dockerignore` (for CopyIgnoredFile).
    pub ignore: Option<&'a Matcher>,
}

/// The result of linting a file.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Findings not skipped by the check directive, in line order.
    pub findings: Vec<Finding>,
    /// True when the check directive says `error=true` and something was found.
    pub failed: bool,
}

/// Build arguments every build defines.
const PREDEFINED_ARGS: &[&str] = &[
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETSTAGE",
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "BUILDKIT_SYNTAX",
    "BUILDKIT_SBOM_SCAN_STAGE",
    "BUILDKIT_SBOM_SCAN_CONTEXT",
    "BUILDKIT_INLINE_CACHE",
    "BUILDKIT_MULTI_PLATFORM",
    "SOURCE_DATE_EPOCH",
];

/// Runs every check on a parsed file.
pub fn lint(doc: &Document, ctx: &LintContext<'_>) -> Report {
    let (skip, error) = check_directive(doc.directives.check.as_deref());
    let mut l = Linter {
        findings: Vec::new(),
        lexer: Lexer::new(doc.directives.escape),
    };
    for w in &doc.warnings {
        l.add(
            "NoEmptyContinuation",
            w.line,
            "Empty continuation line".into(),
        );
    }
    l.casing(doc);
    l.stages_and_vars(doc, ctx);
    let mut findings: Vec<Finding> = l
        .findings
        .into_iter()
        .filter(|f| !skip.contains("all") && !skip.contains(f.rule))
        .collect();
    findings.sort_by_key(|f| f.line);
    let failed = error && !findings.is_empty();
    Report { findings, failed }
}

/// `skip=A,B;error=true` -> (skipped rules, error).
fn check_directive(d: Option<&str>) -> (BTreeSet<String>, bool) {
    let mut skip = BTreeSet::new();
    let mut error = false;
    for part in d.unwrap_or_default().split(';') {
        match part.trim().split_once('=') {
            Some(("skip", v)) => skip.extend(v.split(',').map(|s| s.trim().to_string())),
            Some(("error", v)) => error = v.trim().eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    (skip, error)
}

struct Linter {
    findings: Vec<Finding>,
    lexer: Lexer,
}

fn keyword_as_written(n: &Node) -> &str {
    n.original.split(char::is_whitespace).next().unwrap_or("")
}

impl Linter {
    fn add(&mut self, rule: &'static str, line: usize, message: String) {
        self.findings.push(Finding {
            rule,
            message,
            line,
        });
    }

    fn casing(&mut self, doc: &Document) {
        let (mut upper, mut lower) = (0, 0);
        for n in &doc.nodes {
            let w = keyword_as_written(n);
            if w == w.to_ascii_uppercase() {
                upper += 1;
            } else if w == w.to_ascii_lowercase() {
                lower += 1;
            }
        }
        let majority_upper = upper >= lower;
        for n in &doc.nodes {
            let w = keyword_as_written(n);
            let ok = if majority_upper {
                w == w.to_ascii_uppercase()
            } else {
                w == w.to_ascii_lowercase()
            };
            if !ok {
                let case = if majority_upper {
                    "uppercase"
                } else {
                    "lowercase"
                };
                self.add(
                    "ConsistentInstructionCasing",
                    n.start.line,
                    format!("Command '{w}' should match the case of the command majority ({case})"),
                );
            }
        }
    }

    fn stages_and_vars(&mut self, doc: &Document, ctx: &LintContext<'_>) {
        let (secrets, allowed) = (&*SECRET_NAME, &*PUBLIC_NAME);
        let mut globals: Vec<(String, String)> = Vec::new();
        let mut global_names: BTreeSet<String> = BTreeSet::new();
        let mut stage_names: Vec<String> = Vec::new();
        // Per stage: the variables defined so far (None: unknown base image, skip UndefinedVar).
        let mut stage_env: HashMap<String, Option<BTreeSet<String>>> = HashMap::new();
        let mut defined: Option<BTreeSet<String>> = None;
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        let mut seen_from = false;
        for n in &doc.nodes {
            let Ok(ins) = instruction(n) else {
                // Unknown instructions and bad flags are parse errors, reported by the caller.
                continue;
            };
            let line = n.start.line;
            let secret_check = |this: &mut Linter, kw: &str, name: &str| {
                if secrets.is_match(name) && !allowed.is_match(name) {
                    this.add(
                        "SecretsUsedInArgOrEnv",
                        line,
                        format!(
                            "Do not use ARG or ENV instructions for sensitive data ({kw} {name:?})"
                        ),
                    );
                }
            };
            match &ins {
                Instruction::Arg(args) if !seen_from => {
                    for a in args {
                        secret_check(self, "ARG", &a.name);
                        let v = a
                            .default
                            .as_ref()
                            .and_then(|d| self.lexer.expand_word(d, &globals).ok())
                            .unwrap_or_default();
                        if a.default.is_some() {
                            globals.push((a.name.clone(), v));
                        }
                        global_names.insert(a.name.clone());
                    }
                    continue;
                }
                Instruction::From(from) => {
                    seen_from = true;
                    counts.clear();
                    self.check_from(n, from, &globals, &global_names, &stage_names);
                    let base = self
                        .lexer
                        .expand_word(&from.image, &globals)
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    defined = if base == "scratch" {
                        Some(BTreeSet::new())
                    } else if let Some(env) = stage_env.get(&base) {
                        env.clone()
                    } else {
                        ctx.base_env
                            .and_then(|f| f(&base))
                            .map(|v| v.into_iter().collect())
                    };
                    if let Some(name) = &from.alias {
                        stage_names.push(name.clone());
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(kw) = match &ins {
                Instruction::Cmd(_) => Some("CMD"),
                Instruction::Entrypoint(_) => Some("ENTRYPOINT"),
                Instruction::Healthcheck(_) => Some("HEALTHCHECK"),
                _ => None,
            } {
                let c = counts.entry(kw).or_default();
                *c += 1;
                if *c == 2 {
                    self.add("MultipleInstructionsDisallowed", line, format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used"));
                }
            }
            // Variables in the words this instruction expands.
            let words = ins.expandable_words();
            if let Some(def) = &defined {
                for w in &words {
                    if let Ok(x) = self
                        .lexer
                        .expand_word_tracked(w, &Vec::<(String, String)>::new())
                    {
                        for v in x.unset {
                            if !def.contains(&v)
                                && !PREDEFINED_ARGS.contains(&v.as_str())
                                && !v.starts_with(|c: char| c.is_ascii_digit())
                            {
                                self.add(
                                    "UndefinedVar",
                                    line,
                                    format!("Usage of undefined variable '${v}'"),
                                );
                            }
                        }
                    }
                }
            }
            match &ins {
                Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                    if let crate::instruction::Command::Shell(_) = c {
                        self.add("JSONArgsRecommended", line, format!("JSON arguments recommended for {} to prevent unintended behavior related to OS signals", n.keyword));
                    }
                }
                Instruction::Maintainer(_) => self.add(
                    "MaintainerDeprecated",
                    line,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                ),
                Instruction::Workdir(w) if !w.starts_with('/') && !w.starts_with('$') => {
                    self.add("WorkdirRelativePath", line, format!("Relative workdir {w:?} can have unexpected results if the base image changes"));
                }
                Instruction::Env(kvs) | Instruction::Label(kvs) => {
                    if kvs.iter().any(|kv| kv.legacy) {
                        let k = &n.keyword;
                        self.add("LegacyKeyValueFormat", line, format!("\"{k} key=value\" should be used instead of legacy \"{k} key value\" format"));
                    }
                    if matches!(ins, Instruction::Env(_)) {
                        for kv in kvs {
                            secret_check(self, "ENV", &kv.key);
                        }
                    }
                }
                Instruction::Arg(args) => {
                    for a in args {
                        secret_check(self, "ARG", &a.name);
                    }
                }
                Instruction::Expose(ports) => {
                    for p in ports {
                        if p.contains(':') {
                            self.add("ExposeInvalidFormat", line, format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{p}'"));
                        }
                        if let Some((_, proto)) = p.split_once('/')
                            && proto != proto.to_ascii_lowercase()
                        {
                            self.add("ExposeProtoCasing", line, format!("Defined protocol '{p}' in EXPOSE instruction should be lowercase"));
                        }
                    }
                }
                Instruction::Copy(spec) | Instruction::Add(spec) => {
                    if let Some(m) = ctx.ignore
                        && spec.from.is_none()
                    {
                        for s in &spec.sources {
                            if s.starts_with("<<") || s.contains("://") {
                                continue;
                            }
                            if m.matches(s) {
                                self.add("CopyIgnoredFile", line, format!("Attempting to {} file {s:?} that is excluded by .dockerignore", if n.keyword == "ADD" { "Add" } else { "Copy" }));
                            }
                        }
                    }
                }
                _ => {}
            }
            // Names this instruction defines for the ones after it.
            if let Some(def) = &mut defined {
                match &ins {
                    Instruction::Arg(args) => def.extend(args.iter().map(|a| a.name.clone())),
                    Instruction::Env(kvs) => def.extend(kvs.iter().map(|kv| kv.key.clone())),
                    _ => {}
                }
            }
            if let Some(name) = stage_names.last() {
                stage_env.insert(name.clone(), defined.clone());
            }
        }
    }

    fn check_from(
        &mut self,
        n: &Node,
        from: &crate::instruction::From,
        globals: &[(String, String)],
        global_names: &BTreeSet<String>,
        stage_names: &[String],
    ) {
        let line = n.start.line;
        let words: Vec<&str> = match &n.args {
            Args::Words(w) => w.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        if let [_, as_kw, name] = words.as_slice() {
            let from_kw = keyword_as_written(n);
            let from_upper = from_kw == from_kw.to_ascii_uppercase();
            let as_upper = *as_kw == as_kw.to_ascii_uppercase();
            if from_upper != as_upper {
                self.add(
                    "FromAsCasing",
                    line,
                    format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"),
                );
            }
            if *name != name.to_ascii_lowercase() {
                self.add(
                    "StageNameCasing",
                    line,
                    format!("Stage name '{name}' should be lowercase"),
                );
            }
            let lower = name.to_ascii_lowercase();
            if matches!(lower.as_str(), "scratch" | "context") {
                self.add(
                    "ReservedStageName",
                    line,
                    format!("'{lower}' is reserved and should not be used as a stage name"),
                );
            }
            if stage_names.contains(&lower) {
                self.add(
                    "DuplicateStageName",
                    line,
                    format!("Duplicate stage name '{lower}', stage names should be unique"),
                );
            }
        }
        if let Some(p) = &from.platform {
            if p.contains("$TARGETPLATFORM") || p.contains("${TARGETPLATFORM}") {
                self.add("RedundantTargetPlatform", line, "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior".into());
            } else if !p.contains('$') {
                self.add(
                    "FromPlatformFlagConstDisallowed",
                    line,
                    format!("FROM --platform flag should not use constant value {p:?}"),
                );
            }
        }
        if let Ok(x) = self
            .lexer
            .expand_word_tracked(&from.image, &globals.to_vec())
        {
            let mut undeclared = false;
            for v in x.unset.iter().chain(x.used.iter()) {
                if !global_names.contains(v) && !PREDEFINED_ARGS.contains(&v.as_str()) {
                    undeclared = true;
                    self.add(
                        "UndefinedArgInFrom",
                        line,
                        format!("FROM argument '{v}' is not declared"),
                    );
                }
            }
            let image = x.words.concat();
            let is_stage = stage_names.contains(&image.to_ascii_lowercase());
            if !undeclared && from.image.contains('$') && !is_stage && !valid_image_ref(&image) {
                self.add(
                    "InvalidDefaultArgInFrom",
                    line,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        from.image
                    ),
                );
            }
        }
    }
}

/// Whether `s` has the shape of an image reference (`[host[:port]/]path[:tag][@digest]`).
fn valid_image_ref(s: &str) -> bool {
    IMAGE_REF.is_match(s)
}

static IMAGE_REF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$",
    )
    .expect("valid regex")
});

/// BuildKit's SecretsUsedInArgOrEnv name patterns.
static SECRET_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pass|passwd|pwd|secret|token)(?:_|$)").expect("valid regex")
});
static PUBLIC_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)(?:_|^)public(?:_|$)").expect("valid regex"));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn rules(src: &str) -> Vec<(usize, &'static str)> {
        let doc = parse(src).unwrap();
        lint(&doc, &LintContext::default())
            .findings
            .iter()
            .map(|f| (f.line, f.rule))
            .collect()
    }

    fn one(src: &str, rule: &str) -> String {
        let doc = parse(src).unwrap();
        let r = lint(&doc, &LintContext::default());
        let f = r
            .findings
            .iter()
            .find(|f| f.rule == rule)
            .unwrap_or_else(|| panic!("{rule} not found in {:?}", r.findings));
        f.message.clone()
    }

    #[test]
    fn each_rule_fires_with_buildkits_message() {
        assert_eq!(
            one("FROM scratch\nCMD echo hi\n", "JSONArgsRecommended"),
            "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals"
        );
        assert_eq!(
            one("FROM scratch AS BuilderBase\n", "StageNameCasing"),
            "Stage name 'BuilderBase' should be lowercase"
        );
        assert_eq!(
            one("FROM scratch as base\n", "FromAsCasing"),
            "'as' and 'FROM' keywords' casing do not match"
        );
        assert_eq!(
            one(
                "FROM scratch\nENV A=1\nenv B=2\nRUN x\n",
                "ConsistentInstructionCasing"
            ),
            "Command 'env' should match the case of the command majority (uppercase)"
        );
        assert_eq!(
            one(
                "FROM scratch AS a\nFROM scratch AS a\n",
                "DuplicateStageName"
            ),
            "Duplicate stage name 'a', stage names should be unique"
        );
        assert_eq!(
            one("FROM scratch AS scratch\n", "ReservedStageName"),
            "'scratch' is reserved and should not be used as a stage name"
        );
        assert_eq!(
            one("FROM scratch\nCOPY $foo /x\n", "UndefinedVar"),
            "Usage of undefined variable '$foo'"
        );
        assert_eq!(
            one("FROM alpine:$VERSION\n", "UndefinedArgInFrom"),
            "FROM argument 'VERSION' is not declared"
        );
        assert_eq!(
            one("ARG TAG\nFROM busybox:${TAG}\n", "InvalidDefaultArgInFrom"),
            "Default value for ARG busybox:${TAG} results in empty or invalid base image name"
        );
        assert_eq!(
            one("FROM scratch\nMAINTAINER me\n", "MaintainerDeprecated"),
            "Maintainer instruction is deprecated in favor of using label"
        );
        assert_eq!(
            one("FROM scratch\nWORKDIR app\n", "WorkdirRelativePath"),
            "Relative workdir \"app\" can have unexpected results if the base image changes"
        );
        assert_eq!(
            one(
                "FROM scratch\nCMD [\"a\"]\nCMD [\"b\"]\n",
                "MultipleInstructionsDisallowed"
            ),
            "Multiple CMD instructions should not be used in the same stage because only the last one will be used"
        );
        assert_eq!(
            one("FROM scratch\nENV A 1\n", "LegacyKeyValueFormat"),
            "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"
        );
        assert_eq!(
            one(
                "FROM scratch\nARG AWS_SECRET_ACCESS_KEY\n",
                "SecretsUsedInArgOrEnv"
            ),
            "Do not use ARG or ENV instructions for sensitive data (ARG \"AWS_SECRET_ACCESS_KEY\")"
        );
        assert_eq!(
            one("FROM scratch\nRUN a \\\n\n b\n", "NoEmptyContinuation"),
            "Empty continuation line"
        );
        assert_eq!(
            one(
                "FROM --platform=linux/amd64 scratch\n",
                "FromPlatformFlagConstDisallowed"
            ),
            "FROM --platform flag should not use constant value \"linux/amd64\""
        );
        assert_eq!(
            one(
                "FROM --platform=$TARGETPLATFORM scratch\n",
                "RedundantTargetPlatform"
            ),
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
        );
        assert_eq!(
            one("FROM scratch\nEXPOSE 80/TcP\n", "ExposeProtoCasing"),
            "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase"
        );
        assert_eq!(
            one(
                "FROM scratch\nEXPOSE 127.0.0.1:80:80\n",
                "ExposeInvalidFormat"
            ),
            "EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'"
        );
        let m = Matcher::parse("secret.txt\n").unwrap();
        let doc = parse("FROM scratch\nCOPY secret.txt /\n").unwrap();
        let r = lint(
            &doc,
            &LintContext {
                ignore: Some(&m),
                ..Default::default()
            },
        );
        assert_eq!(
            r.findings[0].message,
            "Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore"
        );
        assert_eq!(
            r.findings[0].url(),
            "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/"
        );
        let f = Finding {
            rule: "JSONArgsRecommended",
            message: String::new(),
            line: 1,
        };
        assert_eq!(
            f.url(),
            "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
        );
    }

    #[test]
    fn clean_files_and_scoping_give_nothing() {
        let src = "ARG BASE=scratch\nFROM $BASE AS build\nARG V=1\nENV P=/x\nWORKDIR $P\nCOPY --chown=$V a $P/\nFROM build\nUSER $V\nCMD [\"run\"]\n";
        assert_eq!(rules(src), vec![]);
        // Stage-local ARGs are not visible in the next unrelated stage.
        assert_eq!(
            rules("FROM scratch\nARG V\nFROM scratch\nUSER $V\n"),
            vec![(4, "UndefinedVar")]
        );
        // Unknown base images: their ENV is not known, so UndefinedVar stays quiet.
        assert_eq!(rules("FROM busybox\nUSER $HOME_USER\n"), vec![]);
        let env = |img: &str| (img == "busybox").then(|| vec!["PATH".to_string()]);
        let doc = parse("FROM busybox\nWORKDIR $PATH/$NOPE\n").unwrap();
        let r = lint(
            &doc,
            &LintContext {
                base_env: Some(&env),
                ..Default::default()
            },
        );
        assert_eq!(
            r.findings
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>(),
            ["Usage of undefined variable '$NOPE'"]
        );
    }

    #[test]
    fn check_directive_skips_and_errors() {
        let doc = parse(
            "# check=skip=JSONArgsRecommended;error=true\nFROM scratch\nCMD a\nMAINTAINER x\n",
        )
        .unwrap();
        let r = lint(&doc, &LintContext::default());
        assert_eq!(
            r.findings.iter().map(|f| f.rule).collect::<Vec<_>>(),
            ["MaintainerDeprecated"]
        );
        assert!(r.failed);
        let doc = parse("# check=skip=all\nFROM scratch\nCMD a\n").unwrap();
        assert!(lint(&doc, &LintContext::default()).findings.is_empty());
        assert_eq!(RULES.len(), 20);
    }
}
