//! [`HttpRegistry`]: the distribution API over HTTP(S) with `ureq`, with anonymous, basic and
//! bearer-token authentication (tokens cached per scope).

use std::sync::Mutex;
use std::time::Duration;

use ureq::http::{self, Response};

use super::auth::{Credentials, TokenCache, TokenResponse, parse_challenge};
use super::{RegistryError, RegistryOptions, Result};

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of this size.
pub(super) const CHUNK: usize = 32 << 20;
/// The most a manifest, token or listing may weigh.
const DOCUMENT_LIMIT: u64 = 8 << 20;

/// A registry reached over HTTP(S).
pub struct HttpRegistry {
    pub(super) host: String,
    base: String,
    agent: ureq::Agent,
    credentials: Option<Credentials>,
    tokens: Mutex<TokenCache>,
    answering: Mutex<()>,
}

impl std::fmt::Debug for HttpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRegistry")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

pub(super) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
}

impl HttpRegistry {
    /// A client for `host`, with credentials from the Docker config when it has some.
    pub fn new(host: &str, options: &RegistryOptions) -> Result<HttpRegistry> {
        let dir = options
            .docker_config
            .clone()
            .unwrap_or_else(super::credentials::default_dir);
        let creds = super::credentials::DockerConfig::load(&dir)?.get(host)?;
        Ok(Self::with_credentials(host, options, creds))
    }

    /// A client for `host` with the given credentials (or none).
    pub fn with_credentials(
        host: &str,
        options: &RegistryOptions,
        credentials: Option<Credentials>,
    ) -> HttpRegistry {
        let scheme = if options.is_insecure(host) {
            "http"
        } else {
            "https"
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .accept_encoding("identity")
            .max_idle_connections_per_host(16)
            .build();
        HttpRegistry {
            host: host.to_string(),
            base: format!("{scheme}://{}", super::api_host(host)),
            agent: ureq::Agent::new_with_config(config),
            credentials,
            tokens: Mutex::new(TokenCache::default()),
            answering: Mutex::new(()),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub(super) fn unreachable(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unreachable {
            host: self.host.clone(),
            reason: e.to_string(),
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        auth: Option<&str>,
        body: &Payload<'_>,
    ) -> Result<Response<ureq::Body>> {
        let mut req = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let result = match body {
            Payload::Empty if method == "GET" || method == "HEAD" || method == "DELETE" => self
                .agent
                .run(req.body(()).map_err(|e| self.unreachable(e))?),
            Payload::Empty => self
                .agent
                .run(req.body(&[][..]).map_err(|e| self.unreachable(e))?),
            Payload::Bytes(b) => self
                .agent
                .run(req.body(*b).map_err(|e| self.unreachable(e))?),
        };
        result.map_err(|e| {
            let text = e.to_string();
            if matches!(e, ureq::Error::HostNotFound) || text.contains("failed to lookup address") {
                RegistryError::UnknownHost {
                    host: self.host.clone(),
                    reason: text.trim_start_matches("io: ").to_string(),
                }
            } else {
                self.unreachable(e)
            }
        })
    }

    /// Sends a request with the authorization cached for `scope`; on a 401, answers the
    /// challenge (basic, or a token from the realm) and sends it once more.
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        scope: &str,
        headers: &[(&str, String)],
        body: Payload<'_>,
    ) -> Result<Response<ureq::Body>> {
        let url = self.url(path);
        let cached = self.cached_authorization(scope);
        let resp = self.send(method, &url, headers, cached.as_deref(), &body)?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        // One thread answers a challenge at a time; the others then find its token cached.
        let _answering = self.answering.lock().expect("auth lock");
        let fresh = self
            .cached_authorization(scope)
            .filter(|f| Some(f) != cached.as_ref());
        if let Some(auth) = fresh {
            let resp = self.send(method, &url, headers, Some(&auth), &body)?;
            if resp.status() != 401 {
                return Ok(resp);
            }
        }
        self.tokens.lock().expect("token cache lock").forget(scope);
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(challenge) = challenge else {
            return Err(self.refused(resp, "the registry sent no WWW-Authenticate challenge"));
        };
        let (authorization, keep) = self.authorize(&challenge, scope)?;
        self.tokens
            .lock()
            .expect("token cache lock")
            .put(scope, authorization.clone(), keep);
        let resp = self.send(method, &url, headers, Some(&authorization), &body)?;
        if resp.status() == 401 {
            return Err(self.refused(resp, "credentials rejected"));
        }
        Ok(resp)
    }

    /// The cached authorization for `scope`; a push token also serves pulls of its repository.
    fn cached_authorization(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache lock");
        tokens.get(scope).or_else(|| {
            let repo = scope.strip_prefix("repository:")?.strip_suffix(":pull")?;
            tokens.get(&push_scope(repo))
        })
    }

    fn refused(&self, mut resp: Response<ureq::Body>, fallback: &str) -> RegistryError {
        let detail = error_text(&mut resp);
        RegistryError::Unauthorized {
            host: self.host.clone(),
            detail: if detail.is_empty() {
                fallback.to_string()
            } else {
                detail
            },
        }
    }

    fn authorize(
        &self,
        challenge: &super::auth::Challenge,
        scope: &str,
    ) -> Result<(String, Duration)> {
        match challenge.scheme.as_str() {
            "basic" => {
                let creds =
                    self.credentials
                        .as_ref()
                        .ok_or_else(|| RegistryError::Unauthorized {
                            host: self.host.clone(),
                            detail: format!("no credentials; run kiln login {}", self.host),
                        })?;
                Ok((creds.basic_header(), Duration::from_secs(3600)))
            }
            "bearer" => {
                let realm = challenge.params.get("realm").ok_or_else(|| {
                    RegistryError::Malformed(format!(
                        "{}: bearer challenge without a realm",
                        self.host
                    ))
                })?;
                let mut query: Vec<(&str, &str)> = Vec::new();
                if let Some(s) = challenge.params.get("service") {
                    query.push(("service", s));
                }
                let scopes: Vec<&str> = if scope.is_empty() {
                    challenge
                        .params
                        .get("scope")
                        .map(|s| vec![s.as_str()])
                        .unwrap_or_default()
                } else {
                    scope.split(' ').collect()
                };
                for s in &scopes {
                    query.push(("scope", s));
                }
                if let Some(c) = &self.credentials {
                    query.push(("account", &c.username));
                }
                let mut url = realm.clone();
                for (i, (k, v)) in query.iter().enumerate() {
                    url.push(if i == 0 && !realm.contains('?') {
                        '?'
                    } else {
                        '&'
                    });
                    url.push_str(k);
                    url.push('=');
                    url.push_str(&percent_encode(v));
                }
                let basic = self.credentials.as_ref().map(Credentials::basic_header);
                let mut resp = self.send("GET", &url, &[], basic.as_deref(), &Payload::Empty)?;
                match resp.status().as_u16() {
                    200 => {}
                    401 | 403 => {
                        return Err(self.refused(resp, "the token server refused the credentials"));
                    }
                    s => {
                        return Err(RegistryError::Status {
                            host: self.host.clone(),
                            op: "get token".into(),
                            status: s,
                            detail: error_text(&mut resp),
                        });
                    }
                }
                let body = read_document(&mut resp).map_err(|e| self.unreachable(e))?;
                let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                    RegistryError::Malformed(format!("{}: token answer is not JSON", self.host))
                })?;
                let value = token.value().ok_or_else(|| {
                    RegistryError::Malformed(format!("{}: token answer has no token", self.host))
                })?;
                Ok((format!("Bearer {value}"), token.keep_for()))
            }
            other => Err(RegistryError::Unauthorized {
                host: self.host.clone(),
                detail: format!("unsupported authentication scheme {other:?}"),
            }),
        }
    }

    pub(super) fn status_error(
        &self,
        op: &str,
        what: &str,
        mut resp: Response<ureq::Body>,
    ) -> RegistryError {
        let status = resp.status().as_u16();
        let detail = error_text(&mut resp);
        match status {
            404 => RegistryError::NotFound {
                what: what.to_string(),
            },
            401 | 403 => RegistryError::Unauthorized {
                host: self.host.clone(),
                detail: if detail.is_empty() {
                    "access denied".into()
                } else {
                    detail
                },
            },
            _ => RegistryError::Status {
                host: self.host.clone(),
                op: op.to_string(),
                status,
                detail,
            },
        }
    }
}

pub(super) fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

pub(super) fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

pub(super) fn location(resp: &Response<ureq::Body>) -> Option<String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(super) fn content_length(resp: &Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get("content-length")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(super) fn with_query(url: &str, q: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{q}")
}

pub(super) fn read_document(
    resp: &mut Response<ureq::Body>,
) -> std::result::Result<Vec<u8>, ureq::Error> {
    resp.body_mut()
        .with_config()
        .limit(DOCUMENT_LIMIT)
        .read_to_vec()
}

/// The registry's error text: the `errors[].message` (and `detail`) of its JSON, else the
/// body's first line, shortened.
pub(super) fn error_text(resp: &mut Response<ureq::Body>) -> String {
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()
        .unwrap_or_default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(errs) = v.get("errors").and_then(|e| e.as_array())
    {
        let msgs: Vec<String> = errs
            .iter()
            .filter_map(|e| {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or_default();
                let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or(code);
                (!msg.is_empty()).then(|| msg.to_lowercase())
            })
            .collect();
        if !msgs.is_empty() {
            return msgs.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let line = text.lines().next().unwrap_or_default().trim();
    line.chars().take(200).collect()
}

pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry as _;

    #[test]
    fn encodes_scopes_and_joins_queries() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert_eq!(
            with_query("/v2/x/uploads/u?_state=s", "digest=d"),
            "/v2/x/uploads/u?_state=s&digest=d"
        );
        assert_eq!(
            with_query("/v2/x/uploads/u", "digest=d"),
            "/v2/x/uploads/u?digest=d"
        );
    }

    #[test]
    fn loopback_is_plain_http_and_hub_uses_its_api_host() {
        let o = RegistryOptions::default();
        assert_eq!(
            HttpRegistry::with_credentials("127.0.0.1:5000", &o, None).base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            HttpRegistry::with_credentials("docker.io", &o, None).base,
            "https://registry-1.docker.io"
        );
        assert_eq!(
            HttpRegistry::with_credentials("quay.io", &o, None).base,
            "https://quay.io"
        );
    }

    #[test]
    fn unknown_host_is_one_clear_error() {
        let o = RegistryOptions {
            insecure: vec!["no-such-host.invalid".into()],
            ..Default::default()
        };
        let r = HttpRegistry::with_credentials("no-such-host.invalid", &o, None);
        let e = r.ping().unwrap_err();
        assert!(matches!(e, RegistryError::UnknownHost { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("unknown registry host no-such-host.invalid"),
            "{e}"
        );
        assert!(!e.is_transient());
    }
}
