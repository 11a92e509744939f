//! Shell-word processing as BuildKit does it for Dockerfile arguments: quote removal, escapes,
//! `$VAR` / `${VAR}` expansion with the `:-`, `-`, `:+`, `+`, `:?`, `?` modifiers, and word
//! splitting.

use std::collections::HashMap;

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

/// A list of `KEY=value` pairs; the last occurrence of a key wins.
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
        let mut s = Scan::new(word, self.escape, env);
        let out = s.words(None, false)?;
        Ok(out.into_iter().next().unwrap_or_default())
    }

    /// Expands `text` into words split on unquoted blanks (and unquoted variable values).
    pub fn expand_words(&self, text: &str, env: &dyn Env) -> Result<Vec<String>, ExpandError> {
        Scan::new(text, self.escape, env).words(None, true)
    }
}

/// Splits `text` on unquoted blanks without expanding anything, keeping quotes and escapes
/// (BuildKit's `parseWords`, used for `KEY=value` lists).
pub fn split_raw_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                continue;
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            _ => {}
        }
        cur.push(c);
        if c == escape
            && quote != Some('\'')
            && let Some(n) = chars.next()
        {
            cur.push(n);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

struct Scan<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: &'a dyn Env,
}

impl<'a> Scan<'a> {
    fn new(text: &str, escape: char, env: &'a dyn Env) -> Self {
        Scan {
            chars: text.chars().collect(),
            pos: 0,
            escape,
            env,
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

    /// Reads words until `stop` (consumed) or the end; `split` turns on word splitting.
    fn words(&mut self, stop: Option<char>, split: bool) -> Result<Vec<String>, ExpandError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut have = false;
        loop {
            let Some(c) = self.next() else {
                if stop.is_some() {
                    return Err(ExpandError("missing '}' in variable expansion".into()));
                }
                break;
            };
            if Some(c) == stop {
                break;
            }
            match c {
                c if c == self.escape => {
                    // A trailing escape character is dropped, as in BuildKit.
                    if let Some(n) = self.next() {
                        cur.push(n);
                        have = true;
                    }
                }
                '\'' => {
                    loop {
                        match self.next() {
                            Some('\'') => break,
                            Some(ch) => cur.push(ch),
                            None => return Err(ExpandError("unexpected end of statement while looking for matching single-quote".into())),
                        }
                    }
                    have = true;
                }
                '"' => {
                    self.double_quoted(&mut cur)?;
                    have = true;
                }
                '$' => {
                    let value = self.dollar()?;
                    if split {
                        let mut parts = value.split(|ch: char| ch.is_ascii_whitespace());
                        if let Some(first) = parts.next() {
                            cur.push_str(first);
                            have |= !first.is_empty();
                        }
                        for p in parts {
                            if have {
                                words.push(std::mem::take(&mut cur));
                            }
                            cur.push_str(p);
                            have = !p.is_empty();
                        }
                    } else {
                        cur.push_str(&value);
                        have = true;
                    }
                }
                c if split && c.is_whitespace() => {
                    if have {
                        words.push(std::mem::take(&mut cur));
                        have = false;
                    }
                }
                c => {
                    cur.push(c);
                    have = true;
                }
            }
        }
        if have || (!split && words.is_empty()) {
            words.push(cur);
        }
        Ok(words)
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), ExpandError> {
        loop {
            match self.next() {
                None => {
                    return Err(ExpandError(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    ));
                }
                Some('"') => return Ok(()),
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) if c == self.escape => match self.peek() {
                    None => {}
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        out.push(n);
                    }
                    Some(_) => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    /// Expands what follows a `$`.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if c.is_ascii_digit() => {
                self.pos += 1;
                Ok(self.env.get(&c.to_string()).unwrap_or_default())
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok(self.env.get(&name).unwrap_or_default())
            }
            _ => Ok("$".to_string()),
        }
    }

    fn braced(&mut self) -> Result<String, ExpandError> {
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError(
                "bad substitution: missing variable name in ${}".into(),
            ));
        }
        let value = self.env.get(&name);
        let colon = self.peek() == Some(':');
        if colon {
            self.pos += 1;
        }
        let op = self.next();
        // `:` tests for unset or empty; without it, only unset counts.
        let unset = match (&value, colon) {
            (None, _) => true,
            (Some(v), true) => v.is_empty(),
            (Some(_), false) => false,
        };
        match op {
            Some('}') if !colon => Ok(value.unwrap_or_default()),
            Some('-') => {
                let word = self.word_until_brace()?;
                Ok(if unset {
                    word
                } else {
                    value.unwrap_or_default()
                })
            }
            Some('+') => {
                let word = self.word_until_brace()?;
                Ok(if unset { String::new() } else { word })
            }
            Some('?') => {
                let word = self.word_until_brace()?;
                if unset {
                    let msg = if word.is_empty() {
                        "is not allowed to be unset".to_string()
                    } else {
                        word
                    };
                    return Err(ExpandError(format!("{name}: {msg}")));
                }
                Ok(value.unwrap_or_default())
            }
            Some(c @ ('#' | '%' | '/')) if !colon => Err(ExpandError(format!(
                "pattern substitution ${{{name}{c}...}} is not supported yet"
            ))),
            _ => Err(ExpandError(format!("bad substitution in ${{{name}...}}"))),
        }
    }

    fn word_until_brace(&mut self) -> Result<String, ExpandError> {
        Ok(self.words(Some('}'), false)?.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(String, String)> {
        [("A", "a"), ("E", ""), ("SP", "x  y"), ("PATH", "/bin")]
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
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(word("'$A'"), "$A");
        assert_eq!(word("\"$A b\""), "a b");
        assert_eq!(word("\\$A"), "$A");
        assert_eq!(word("\"\\$A \\n\""), "$A \\n");
        assert_eq!(word("a\\ b"), "a b");
        assert!(Lexer::default().expand_word("'open", &env()).is_err());
    }

    #[test]
    fn word_splitting() {
        let l = Lexer::default();
        assert_eq!(
            l.expand_words("a  b 'c d' \"\"", &env()).unwrap(),
            ["a", "b", "c d", ""]
        );
        assert_eq!(l.expand_words("$SP z", &env()).unwrap(), ["x", "y", "z"]);
        assert_eq!(l.expand_words("\"$SP\"", &env()).unwrap(), ["x  y"]);
        assert_eq!(l.expand_words("$E", &env()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn raw_split_keeps_quotes() {
        assert_eq!(
            split_raw_words("a=\"b c\" d='e f' g\\ h=i", '\\'),
            ["a=\"b c\"", "d='e f'", "g\\ h=i"]
        );
    }
}
