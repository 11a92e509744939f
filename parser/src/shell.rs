//! Shell-word processing as BuildKit does it for Dockerfile arguments: quote removal, escapes,
//! `$VAR` / `${VAR}` expansion with every modifier BuildKit supports, and word splitting.
//!
//! The rules (pinned by BuildKit's `envVarTest` and `wordsTest` tables, which
//! `parser/tests/conformance.rs` runs): outside quotes the escape character makes the next
//! character literal; `'...'` is literal; in `"..."` the escape character only escapes `"`,
//! `$` and itself; `$name` takes letters, digits and `_` (a leading digit makes it positional,
//! which is always unset); `${name:-w}`, `${name-w}`, `${name:+w}`, `${name+w}`, `${name:?m}`,
//! `${name?m}`, `${name#p}`, `${name##p}`, `${name%p}`, `${name%%p}`, `${name/p/r}`,
//! `${name//p/r}` as in POSIX shells and bash, with glob patterns.

use std::collections::{BTreeSet, HashMap};

use crate::error::ExpandError;

/// Where variable values come from during expansion.
pub trait Env {
    /// The value of `key`, if set (set-but-empty is `Some("")`).
    fn get(&self, key: &str) -> Option<String>;
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// A list of `(key, value)` pairs; the last occurrence of a key wins.
impl Env for [(String, String)] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

impl Env for Vec<(String, String)> {
    fn get(&self, key: &str) -> Option<String> {
        Env::get(self.as_slice(), key)
    }
}

/// The result of an expansion and the variables it looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded words (one for [`Lexer::expand_word_tracked`]).
    pub words: Vec<String>,
    /// Variables referenced that were set.
    pub used: BTreeSet<String>,
    /// Variables referenced that were not set.
    pub unset: BTreeSet<String>,
}

/// Expands words with a given escape character.
#[derive(Clone, Copy, Debug)]
pub struct Lexer {
    escape: char,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer { escape: '\\' }
    }
}

impl Lexer {
    /// A lexer using `escape` as the escape character.
    pub fn new(escape: char) -> Self {
        Lexer { escape }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands `word` into one string: quotes removed, variables substituted, no splitting.
    pub fn expand_word(&self, word: &str, env: &dyn Env) -> Result<String, ExpandError> {
        Ok(self.expand_word_tracked(word, env)?.words.remove(0))
    }

    /// [`Lexer::expand_word`], also reporting which variables it referenced.
    pub fn expand_word_tracked(&self, word: &str, env: &dyn Env) -> Result<Expansion, ExpandError> {
        let mut s = Scan::new(word, self.escape, env);
        let out = s.run(&[])?;
        Ok(Expansion {
            words: vec![out.into_iter().map(|(c, _)| c).collect()],
            used: s.used,
            unset: s.unset,
        })
    }

    /// Expands `text` into words, split on unquoted whitespace (including whitespace that
    /// unquoted variables expand to); empty words are dropped.
    pub fn expand_words(&self, text: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        let mut s = Scan::new(text, self.escape, env);
        let out = s.run(&[])?;
        let mut words = Vec::new();
        let mut cur = String::new();
        for (c, splits) in out {
            if splits && c.is_whitespace() {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        Ok(words)
    }
}

/// Output characters, each marked with whether it may split words.
type Out = Vec<(char, bool)>;

struct Scan<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: &'a dyn Env,
    used: BTreeSet<String>,
    unset: BTreeSet<String>,
}

fn err<T>(m: impl Into<String>) -> Result<T, ExpandError> {
    Err(ExpandError(m.into()))
}

impl<'a> Scan<'a> {
    fn new(text: &str, escape: char, env: &'a dyn Env) -> Self {
        Scan {
            chars: text.chars().collect(),
            pos: 0,
            escape,
            env,
            used: BTreeSet::new(),
            unset: BTreeSet::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Processes until one of `stop` (consumed) or the end of input; with a stop set, the end
    /// of input before a stop character is an error.
    fn run(&mut self, stop: &[char]) -> Result<Out, ExpandError> {
        let mut out = Out::new();
        loop {
            let Some(c) = self.next() else {
                if !stop.is_empty() {
                    return err("syntax error: missing '}'");
                }
                return Ok(out);
            };
            if stop.contains(&c) {
                return Ok(out);
            }
            match c {
                c if c == self.escape => {
                    // A trailing escape character is dropped.
                    if let Some(n) = self.next() {
                        out.push((n, false));
                    }
                }
                '\'' => loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(ch) => out.push((ch, false)),
                        None => {
                            return err(
                                "unexpected end of statement while looking for matching single-quote",
                            );
                        }
                    }
                },
                '"' => self.double_quoted(&mut out)?,
                '$' => {
                    let value = self.dollar()?;
                    out.extend(value.chars().map(|ch| (ch, true)));
                }
                c => out.push((c, true)),
            }
        }
    }

    fn double_quoted(&mut self, out: &mut Out) -> Result<(), ExpandError> {
        loop {
            match self.next() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching double-quote",
                    );
                }
                Some('"') => return Ok(()),
                Some('$') => {
                    let v = self.dollar()?;
                    out.extend(v.chars().map(|ch| (ch, false)));
                }
                Some(c) if c == self.escape => match self.peek() {
                    None => {}
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        out.push((n, false));
                    }
                    Some(_) => out.push((c, false)),
                },
                Some(c) => out.push((c, false)),
            }
        }
    }

    /// A variable name: letters/digits/`_`, or a run of digits, or one special character.
    fn name(&mut self) -> String {
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(d) = self.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(d);
                    self.pos += 1;
                }
                n
            }
            Some(c) if c.is_alphabetic() || c == '_' => {
                let mut n = String::new();
                while let Some(d) = self.peek().filter(|d| d.is_alphanumeric() || *d == '_') {
                    n.push(d);
                    self.pos += 1;
                }
                n
            }
            Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
                self.pos += 1;
                c.to_string()
            }
            _ => String::new(),
        }
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        // Positional and special parameters are never set in a Dockerfile.
        let special = name.starts_with(|c: char| c.is_ascii_digit() || "@*#?-$!".contains(c));
        let v = if special { None } else { self.env.get(name) };
        if v.is_some() {
            self.used.insert(name.to_string());
        } else {
            self.unset.insert(name.to_string());
        }
        v
    }

    /// Expands what follows a `$`.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        if self.peek() == Some('{') {
            self.pos += 1;
            return self.braced();
        }
        let name = self.name();
        if name.is_empty() {
            return Ok("$".to_string());
        }
        Ok(self.lookup(&name).unwrap_or_default())
    }

    fn word_until(&mut self, stop: &[char]) -> Result<String, ExpandError> {
        Ok(self.run(stop)?.into_iter().map(|(c, _)| c).collect())
    }

    fn braced(&mut self) -> Result<String, ExpandError> {
        let name = self.name();
        if name.is_empty() {
            return err("bad substitution: missing variable name in ${}");
        }
        let value = self.lookup(&name);
        let Some(op) = self.next() else {
            return err("syntax error: missing '}'");
        };
        match op {
            '}' => Ok(value.unwrap_or_default()),
            ':' => {
                let Some(m) = self.next() else {
                    return err("syntax error: missing '}'");
                };
                let empty_is_unset = value.as_deref().is_none_or(str::is_empty);
                self.modifier(&name, m, value, empty_is_unset)
            }
            '-' | '+' | '?' => {
                let unset = value.is_none();
                self.modifier(&name, op, value, unset)
            }
            '#' | '%' => {
                let longest = self.peek() == Some(op);
                if longest {
                    self.pos += 1;
                }
                let pattern = self.word_until(&['}'])?;
                let v = value.unwrap_or_default();
                Ok(if op == '#' {
                    remove_prefix(&v, &pattern, longest)
                } else {
                    remove_suffix(&v, &pattern, longest)
                })
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = self.word_until(&['/', '}'])?;
                // `${v/p}` (no replacement) deletes the match.
                let replacement = if self.chars.get(self.pos - 1) == Some(&'/') {
                    self.word_until(&['}'])?
                } else {
                    String::new()
                };
                Ok(replace(
                    &value.unwrap_or_default(),
                    &pattern,
                    &replacement,
                    all,
                ))
            }
            c => err(format!("unsupported modifier ({c}) in substitution")),
        }
    }

    fn modifier(
        &mut self,
        name: &str,
        m: char,
        value: Option<String>,
        unset: bool,
    ) -> Result<String, ExpandError> {
        let word = match m {
            '-' | '+' | '?' => self.word_until(&['}'])?,
            c => return err(format!("unsupported modifier (:{c}) in substitution")),
        };
        match m {
            '-' => Ok(if unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if unset { String::new() } else { word }),
            _ => {
                if unset {
                    let msg = if word.is_empty() {
                        "is not allowed to be unset".to_string()
                    } else {
                        word
                    };
                    return err(format!("{name}: {msg}"));
                }
                Ok(value.unwrap_or_default())
            }
        }
    }
}

/// Whether `text` matches the shell glob `pattern` (`*`, `?`, `[...]`, `\` escapes).
///
/// Greedy matching with backtracking to the last `*` only: O(len(pattern) * len(text)), so a
/// hostile pattern such as `*a*a*a*b` cannot make expansion exponential.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = compile_glob(pattern);
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(Tok::Star) => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(tok) if tok.matches(t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| matches!(t, Tok::Star))
}

enum Tok {
    Star,
    Any,
    Lit(char),
    Class {
        ranges: Vec<(char, char)>,
        negate: bool,
    },
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Star => true,
            Tok::Any => true,
            Tok::Lit(l) => *l == c,
            Tok::Class { ranges, negate } => {
                ranges.iter().any(|(a, b)| *a <= c && c <= *b) != *negate
            }
        }
    }
}

fn compile_glob(pattern: &str) -> Vec<Tok> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '\\' if i + 1 < p.len() => {
                i += 1;
                out.push(Tok::Lit(p[i]));
            }
            '[' => match class(&p[i..]) {
                Some((tok, len)) => {
                    out.push(tok);
                    i += len - 1;
                }
                None => out.push(Tok::Lit('[')),
            },
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    out
}

/// A bracket expression at the start of `p`, and its length in `p`.
fn class(p: &[char]) -> Option<(Tok, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut ranges: Vec<(char, char)> = Vec::new();
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((Tok::Class { ranges, negate }, i + 1));
        }
        first = false;
        let lo = if p[i] == '\\' && i + 1 < p.len() {
            i += 1;
            p[i]
        } else {
            p[i]
        };
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
            ranges.push((lo, p[i + 2]));
            i += 3;
        } else {
            ranges.push((lo, lo));
            i += 1;
        }
    }
    None
}

fn char_boundaries(s: &str) -> Vec<usize> {
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .collect()
}

fn remove_prefix(v: &str, pattern: &str, longest: bool) -> String {
    let b = char_boundaries(v);
    let mut cands: Vec<usize> = b.clone();
    if longest {
        cands.reverse();
    }
    for end in cands {
        if glob_match(pattern, &v[..end]) {
            return v[end..].to_string();
        }
    }
    v.to_string()
}

fn remove_suffix(v: &str, pattern: &str, longest: bool) -> String {
    let b = char_boundaries(v);
    let mut cands: Vec<usize> = b.clone();
    if !longest {
        cands.reverse();
    }
    for start in cands {
        if glob_match(pattern, &v[start..]) {
            return v[..start].to_string();
        }
    }
    v.to_string()
}

/// Replaces the longest match of `pattern` at the leftmost position (all of them with `all`).
fn replace(v: &str, pattern: &str, replacement: &str, all: bool) -> String {
    if pattern.is_empty() {
        return v.to_string();
    }
    let b = char_boundaries(v);
    let mut out = String::new();
    let mut i = 0;
    let mut replaced = false;
    while i < b.len() - 1 {
        let start = b[i];
        let found = if replaced && !all {
            None
        } else {
            b[i + 1..]
                .iter()
                .rev()
                .find(|&&end| glob_match(pattern, &v[start..end]))
                .copied()
        };
        match found {
            Some(end) => {
                out.push_str(replacement);
                replaced = true;
                i = b.iter().position(|&x| x == end).expect("boundary");
            }
            None => {
                out.push_str(&v[start..b[i + 1]]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        [
            ("A", "a"),
            ("E", ""),
            ("SP", "x  y"),
            ("PATH", "/bin"),
            ("F", "archive.tar.gz"),
            ("P", "/usr/local/bin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn word(s: &str) -> String {
        Lexer::default().expand_word(s, &env()).unwrap()
    }

    #[test]
    fn expands_variables_and_modifiers() {
        assert_eq!(word("$A"), "a");
        assert_eq!(word("${A}b"), "ab");
        assert_eq!(word("$PATH:/usr/bin"), "/bin:/usr/bin");
        assert_eq!(word("${E:-d}|${E-d}|${U-d}"), "d||d");
        assert_eq!(word("${A:+s}|${E:+s}|${E+s}|${U+s}"), "s||s|");
        assert_eq!(word("${U:-${A}x}"), "ax");
        assert_eq!(word("$"), "$");
        assert_eq!(word("a$"), "a$");
        let e = Lexer::default()
            .expand_word("${U:?must be set}", &env())
            .unwrap_err();
        assert_eq!(e.to_string(), "U: must be set");
        assert_eq!(Lexer::default().expand_word("${E?}", &env()).unwrap(), "");
    }

    #[test]
    fn pattern_substitutions() {
        // Bash semantics (BuildKit documents them as in bash):
        // https://docs.docker.com/reference/dockerfile/#environment-replacement
        assert_eq!(word("${F#*.}"), "tar.gz");
        assert_eq!(word("${F##*.}"), "gz");
        assert_eq!(word("${F%.*}"), "archive.tar");
        assert_eq!(word("${F%%.*}"), "archive");
        assert_eq!(word("${P/local/opt}"), "/usr/opt/bin");
        assert_eq!(word("${P//\\//:}"), ":usr:local:bin");
        assert_eq!(
            word("${P/#\\/usr/}"),
            "/usr/local/bin",
            "no anchors: # is literal here"
        );
        assert_eq!(word("${F/a}"), "rchive.tar.gz");
        assert_eq!(word("${F#[ab]r}"), "chive.tar.gz");
        assert_eq!(word("${F%.[!t]z}"), "archive.tar");
        assert_eq!(word("${U#x}|${U/x/y}"), "|");
        assert_eq!(word("${F#nomatch}"), "archive.tar.gz");
        assert!(
            !glob_match("*a*a*a*a*a*a*a*a*b", &"a".repeat(40)),
            "no exponential blow-up"
        );
        assert!(glob_match("a*[0-9]?z", "abc7xz"));
        assert!(!glob_match("a*[!0-9]z", "a7z"));
    }

    #[test]
    fn tracks_used_and_unset_variables() {
        let x = Lexer::default()
            .expand_word_tracked("$A ${U:-$E} '$NOT'", &env())
            .unwrap();
        assert_eq!(x.used.into_iter().collect::<Vec<_>>(), ["A", "E"]);
        assert_eq!(x.unset.into_iter().collect::<Vec<_>>(), ["U"]);
    }

    #[test]
    fn word_splitting() {
        let l = Lexer::default();
        assert_eq!(
            l.expand_words("a  b 'c d' \"\"", &env()).unwrap(),
            ["a", "b", "c d"]
        );
        assert_eq!(l.expand_words("$SP z", &env()).unwrap(), ["x", "y", "z"]);
        assert_eq!(l.expand_words("\"$SP\"", &env()).unwrap(), ["x  y"]);
        assert_eq!(l.expand_words("$E", &env()).unwrap(), Vec::<String>::new());
        assert_eq!(l.expand_words("a\\ b", &env()).unwrap(), ["a b"]);
    }
}
