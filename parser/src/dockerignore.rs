//! `.dockerignore` matching with BuildKit's rules (moby's `patternmatcher`).
//!
//! - One pattern per line; blank lines and lines starting with `#` are ignored; surrounding
//!   whitespace is trimmed.
//! - A leading `!` makes an exception (re-includes what earlier patterns excluded).
//! - Patterns are cleaned like Go's `filepath.Clean` (`./a//b/../c` is `a/c`) and a leading
//!   `/` is dropped: patterns are relative to the context root.
//! - `*` matches any run of characters except `/`, `?` one character except `/`, `[...]` a
//!   character class, `\` escapes the next character, and `**` any number of directories
//!   (`**/x`, `a/**/b`, and a trailing `**` matching everything below).
//! - A path is excluded when the last pattern matching it, or matching one of its parent
//!   directories, is not an exception.
//!
//! (Unlike moby, regular-expression characters such as `+` or `(` are taken literally.)

use std::path::{Path, PathBuf};

use regex::Regex;

/// One compiled pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    /// The cleaned pattern text, without `!`.
    pub text: String,
    /// Whether it is an exception (`!pattern`).
    pub exclusion: bool,
    regex: Regex,
}

/// A set of `.dockerignore` patterns.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
}

impl Matcher {
    /// Reads a `.dockerignore` file's contents.
    pub fn parse(contents: &str) -> Result<Matcher, String> {
        let lines: Vec<String> = contents
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        Matcher::new(&lines)
    }

    /// Compiles patterns (each may start with `!`).
    pub fn new(patterns: &[String]) -> Result<Matcher, String> {
        let mut out = Vec::new();
        for p in patterns {
            let (exclusion, body) = match p.strip_prefix('!') {
                Some(b) => (true, b.trim()),
                None => (false, p.as_str()),
            };
            if body.is_empty() {
                if exclusion {
                    return Err("illegal exclusion pattern: \"!\"".into());
                }
                continue;
            }
            let mut text = clean(body);
            if text.len() > 1 && text.starts_with('/') {
                text.remove(0);
            }
            let regex = Regex::new(&to_regex(&text))
                .map_err(|e| format!("invalid .dockerignore pattern {p:?}: {e}"))?;
            out.push(Pattern {
                text,
                exclusion,
                regex,
            });
        }
        Ok(Matcher { patterns: out })
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether `path` (relative to the context root, `/`-separated) is excluded.
    pub fn matches(&self, path: &str) -> bool {
        let path = clean(path);
        let path = path.trim_start_matches('/');
        let parents: Vec<&str> = path.split('/').collect();
        let mut matched = false;
        for p in &self.patterns {
            // An exception can only change the answer for something already excluded.
            if p.exclusion != matched {
                continue;
            }
            let mut hit = p.regex.is_match(path);
            if !hit && parents.len() > 1 {
                for i in 1..parents.len() {
                    if p.regex.is_match(&parents[..i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether a directory could hold a path re-included by an exception (so a walker must
    /// descend into it even though the directory itself is excluded).
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        let dir = clean(dir);
        let dir = dir.trim_start_matches('/');
        self.patterns.iter().any(|p| {
            p.exclusion
                && (p.text.starts_with(&format!("{dir}/"))
                    || p.text.contains("**")
                    || p.text.starts_with('*'))
        })
    }
}

/// The ignore file for a build: `<Dockerfile>.dockerignore` beside the Dockerfile if it
/// exists, else `.dockerignore` at the context root.
pub fn ignore_file(dockerfile: &Path, context: &Path) -> PathBuf {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    let specific = PathBuf::from(specific);
    if specific.is_file() {
        specific
    } else {
        context.join(".dockerignore")
    }
}

/// Go's `path.Clean`.
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

fn to_regex(pattern: &str) -> String {
    let mut re = String::from("^");
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                if chars.get(i + 1) == Some(&'/') {
                    i += 1;
                }
                if i + 1 >= chars.len() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                // A character class passes through (with `!` as negation, as in Go's filepath).
                match chars[i..]
                    .iter()
                    .position(|&ch| ch == ']')
                    .filter(|&e| e > 1)
                {
                    Some(end) => {
                        let body: String = chars[i + 1..i + end].iter().collect();
                        let body = body
                            .strip_prefix('!')
                            .map(|b| format!("^{b}"))
                            .unwrap_or(body);
                        re.push('[');
                        re.push_str(&body.replace('\\', "\\\\").replace('[', "\\["));
                        re.push(']');
                        i += end;
                    }
                    None => re.push_str("\\["),
                }
            }
            '\\' if i + 1 < chars.len() => {
                i += 1;
                re.push_str(&regex::escape(&chars[i].to_string()));
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> Matcher {
        Matcher::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn cleans_patterns_and_paths() {
        assert_eq!(clean("./a//b/../c/"), "a/c");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean(""), ".");
        let x = m(&["/node_modules", "./build/"]);
        assert_eq!(x.patterns()[0].text, "node_modules");
        assert_eq!(x.patterns()[1].text, "build");
    }

    #[test]
    fn wildcards_and_parent_directories() {
        // https://docs.docker.com/build/concepts/context/#dockerignore-files
        let x = m(&["*/temp*", "*/*/temp*", "temp?"]);
        assert!(x.matches("somedir/temporary.txt"));
        assert!(x.matches("somedir/temp"));
        assert!(x.matches("somedir/subdir/temporary.txt"));
        assert!(x.matches("tempa"));
        assert!(!x.matches("tempab"));
        assert!(!x.matches("temp"));
        // A pattern matching a directory excludes everything under it.
        assert!(m(&["build"]).matches("build/out/app.o"));
        assert!(
            !m(&["build"]).matches("src/build"),
            "patterns are anchored at the root"
        );
        assert!(!m(&["*.go"]).matches("a/b.go"), "* does not cross /");
    }

    #[test]
    fn double_star() {
        let x = m(&["**/*.go"]);
        assert!(x.matches("a.go") && x.matches("a/b/c.go"));
        assert!(!x.matches("a.gox"));
        let x = m(&["a/**/z"]);
        assert!(x.matches("a/z") && x.matches("a/b/c/z"));
        let x = m(&["docs/**"]);
        assert!(x.matches("docs/x") && x.matches("docs/a/b"));
    }

    #[test]
    fn exceptions_last_match_wins() {
        // The documented README example: everything markdown except README*.md.
        let x = Matcher::parse("# comment\n\n*.md\n!README*.md\nREADME-secret.md\n").unwrap();
        assert!(x.matches("CHANGES.md"));
        assert!(!x.matches("README.md"));
        assert!(x.matches("README-secret.md"));
        let x = m(&["*", "!keep", "!src/main.rs"]);
        assert!(x.matches("other"));
        assert!(!x.matches("keep"));
        assert!(!x.matches("src/main.rs"));
        assert!(x.matches("src/lib.rs"));
        assert!(x.may_reinclude_below("src"));
        assert!(Matcher::new(&["!".to_string()]).is_err());
    }

    #[test]
    fn classes_and_escapes() {
        let x = m(&["file[0-9].txt", "lit\\*", "[!a]x"]);
        assert!(x.matches("file3.txt") && !x.matches("filex.txt"));
        assert!(x.matches("lit*") && !x.matches("litx"));
        assert!(x.matches("bx") && !x.matches("ax"));
        assert!(m(&["a+b"]).matches("a+b"));
    }
}
