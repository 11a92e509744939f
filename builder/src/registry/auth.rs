//! Registry authentication: `WWW-Authenticate` challenges, basic credentials and bearer tokens
//! cached per scope.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (`<token>` with an identity token).
    pub username: String,
    /// The password or token.
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <secret>)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lower-cased).
    pub scheme: String,
    /// Its parameters (`realm`, `service`, `scope`), names lower-cased.
    pub params: HashMap<String, String>,
}

/// Parses a `WWW-Authenticate` value (`Bearer realm="...",service="...",scope="..."`).
/// Returns `None` when it has no scheme.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.trim().is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| *c == ' ') {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        params.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The body of a token endpoint's answer (Docker's token spec and OAuth2 both occur).
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    /// The token (Docker's field).
    #[serde(default)]
    pub token: Option<String>,
    /// The token (OAuth2's field).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Lifetime in seconds (60 when absent, per the spec).
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token, whichever field carried it.
    pub fn value(&self) -> Option<&str> {
        self.token
            .as_deref()
            .or(self.access_token.as_deref())
            .filter(|t| !t.is_empty())
    }

    /// How long to keep using it: its lifetime less a margin, at least 10 s.
    pub fn keep_for(&self) -> Duration {
        let secs = self.expires_in.unwrap_or(60).max(20);
        Duration::from_secs(secs - 10)
    }
}

/// Authorization values cached per scope (`repository:library/busybox:pull`).
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<String, (String, Instant)>,
}

impl TokenCache {
    /// The cached `Authorization` value for `scope`, if still fresh.
    pub fn get(&self, scope: &str) -> Option<String> {
        self.tokens
            .get(scope)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(v, _)| v.clone())
    }

    /// Caches `authorization` for `scope` until `keep_for` from now.
    pub fn put(&mut self, scope: &str, authorization: String, keep_for: Duration) {
        self.tokens.insert(
            scope.to_string(),
            (authorization, Instant::now() + keep_for),
        );
    }

    /// Forgets the value for `scope` (after the registry refused it).
    pub fn forget(&mut self, scope: &str) {
        self.tokens.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull,push");
    }

    #[test]
    fn parses_basic_and_odd_spacing() {
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c = parse_challenge(r#"bearer  Realm = "x\"y" , service=plain"#).unwrap();
        assert_eq!(c.params["realm"], "x\"y");
        assert_eq!(c.params["service"], "plain");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn tokens_expire() {
        let mut cache = TokenCache::default();
        cache.put("s", "Bearer t".into(), Duration::from_secs(60));
        assert_eq!(cache.get("s").as_deref(), Some("Bearer t"));
        cache.put("s", "Bearer t".into(), Duration::ZERO);
        assert_eq!(cache.get("s"), None);
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.value(), Some("a"));
        assert_eq!(t.keep_for(), Duration::from_secs(290));
    }

    #[test]
    fn basic_header_is_base64() {
        let c = Credentials {
            username: "u".into(),
            secret: "p:w".into(),
        };
        assert_eq!(c.basic_header(), "Basic dTpwOnc=");
        assert!(!format!("{c:?}").contains("p:w"));
    }
}
