//! A loopback HTTP proxy in front of a registry, for tests: it injects faults (dropped
//! connections, 5xx answers, truncated or corrupted blobs) and can demand bearer tokens
//! from its own small token server, as Docker Hub's auth flow does.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy does to traffic. Counters say how many more times a fault fires; a
/// permanent fault uses `u32::MAX`.
#[derive(Default)]
pub struct Faults {
    /// Blob downloads cut off half-way (headers promise the full length).
    pub drop_blob_mid_body: AtomicU32,
    /// Blob downloads that end early with an honest, shorter `Content-Length`.
    pub truncate_blob: AtomicU32,
    /// Blob downloads with one byte flipped.
    pub flip_blob_byte: AtomicU32,
    /// Requests of any kind answered `503 Service Unavailable`.
    pub unavailable: AtomicU32,
    /// Requests answered `500 Internal Server Error`.
    pub internal_error: AtomicU32,
    /// Uploads (PATCH/PUT of blob data) whose connection is closed without an answer.
    pub drop_upload: AtomicU32,
    /// Manifest downloads answered with a Docker schema 1 document instead.
    pub schema1_manifest: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            u32::MAX => Some(u32::MAX),
            n => Some(n - 1),
        })
        .is_ok()
}

/// Bearer-token auth: one user, tokens issued by the proxy's `/token` endpoint.
pub struct BearerAuth {
    /// The user name the token server accepts.
    pub user: String,
    /// Its password.
    pub password: String,
    issued: Mutex<HashSet<String>>,
    /// How many tokens were handed out.
    pub tokens_issued: AtomicU32,
}

impl BearerAuth {
    /// A token server for one user.
    pub fn new(user: &str, password: &str) -> Self {
        BearerAuth {
            user: user.into(),
            password: password.into(),
            issued: Mutex::new(HashSet::new()),
            tokens_issued: AtomicU32::new(0),
        }
    }
}

/// A running proxy; it stops serving when the test process ends.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its faults, adjustable while it runs.
    pub faults: Arc<Faults>,
    /// Its bearer auth, if any.
    pub auth: Option<Arc<BearerAuth>>,
    /// What it has seen.
    pub stats: Arc<Stats>,
}

/// Counts of what a proxy has seen.
#[derive(Default)]
pub struct Stats {
    /// Requests.
    pub requests: AtomicU32,
    /// `PATCH` requests (chunks of chunked uploads).
    pub patches: AtomicU32,
    /// `METHOD path` of every request, in order.
    pub log: Mutex<Vec<String>>,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut impl BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Some((first.trim_end().to_string(), headers))
}

fn read_body(r: &mut impl BufRead, headers: &[(String, String)], until_close: bool) -> Vec<u8> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).unwrap_or(0) == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                let _ = r.read_line(&mut end);
                break;
            }
            let mut chunk = vec![0; n];
            if r.read_exact(&mut chunk).is_err() {
                break;
            }
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            let _ = r.read_line(&mut crlf);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        let _ = r.read_exact(&mut body);
    } else if until_close {
        let _ = r.read_to_end(&mut body);
    }
    body
}

impl Proxy {
    /// Starts a proxy in front of `upstream` (`host:port`).
    pub fn start(upstream: &str, auth: Option<BearerAuth>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let faults = Arc::new(Faults::default());
        let auth = auth.map(Arc::new);
        let stats = Arc::new(Stats::default());
        let (f, a, n, up, me) = (
            faults.clone(),
            auth.clone(),
            stats.clone(),
            upstream.to_string(),
            addr.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (f, a, n, up, me) = (f.clone(), a.clone(), n.clone(), up.clone(), me.clone());
                std::thread::spawn(move || serve(conn, &up, &me, &f, a.as_deref(), &n));
            }
        });
        Proxy {
            addr,
            faults,
            auth,
            stats,
        }
    }
}

fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body);
}

fn serve(
    conn: TcpStream,
    upstream: &str,
    me: &str,
    faults: &Faults,
    auth: Option<&BearerAuth>,
    stats: &Stats,
) {
    let mut out = conn.try_clone().expect("clone stream");
    let mut input = BufReader::new(conn);
    let Some((line, headers)) = read_head(&mut input) else {
        return;
    };
    let body = read_body(&mut input, &headers, false);
    let mut parts = line.split(' ');
    let req = Request {
        method: parts.next().unwrap_or_default().to_string(),
        path: parts.next().unwrap_or_default().to_string(),
        headers,
        body,
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    stats
        .log
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.path));
    if req.method == "PATCH" {
        stats.patches.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(auth) = auth {
        if req.path.starts_with("/token") {
            return token(&mut out, &req, auth);
        }
        let ok = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| auth.issued.lock().unwrap().contains(t));
        if !ok {
            let repo = req
                .path
                .strip_prefix("/v2/")
                .and_then(|p| {
                    p.split_once("/blobs/")
                        .or(p.split_once("/manifests/"))
                        .or(p.split_once("/tags/"))
                })
                .map(|(r, _)| r.to_string());
            let mut challenge = format!("Bearer realm=\"http://{me}/token\",service=\"kiln-test\"");
            if let Some(r) = repo {
                let actions = if req.method == "GET" || req.method == "HEAD" {
                    "pull"
                } else {
                    "pull,push"
                };
                challenge.push_str(&format!(",scope=\"repository:{r}:{actions}\""));
            }
            let body =
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
            return respond(
                &mut out,
                "401 Unauthorized",
                &[
                    ("WWW-Authenticate", challenge),
                    ("Content-Type", "application/json".into()),
                ],
                body,
            );
        }
    }
    if take(&faults.unavailable) {
        return respond(
            &mut out,
            "503 Service Unavailable",
            &[],
            b"injected: unavailable",
        );
    }
    if take(&faults.internal_error) {
        return respond(
            &mut out,
            "500 Internal Server Error",
            &[],
            b"{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"injected failure\"}]}",
        );
    }
    if req.method == "GET" && req.path.contains("/manifests/") && take(&faults.schema1_manifest) {
        let body = br#"{"schemaVersion":1,"name":"old","tag":"v1","architecture":"amd64","fsLayers":[],"history":[]}"#;
        return respond(
            &mut out,
            "200 OK",
            &[(
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            )],
            body,
        );
    }
    let is_upload = (req.method == "PATCH" || req.method == "PUT")
        && req.path.contains("/blobs/uploads/")
        && !req.body.is_empty();
    if is_upload && take(&faults.drop_upload) {
        return; // closes the connection without an answer
    }
    // Forward upstream, one request per connection.
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return respond(&mut out, "502 Bad Gateway", &[], b"upstream down");
    };
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
    for (k, v) in &req.headers {
        let k_l = k.to_ascii_lowercase();
        if k_l == "connection"
            || k_l == "transfer-encoding"
            || k_l == "content-length"
            || (auth.is_some() && k_l == "authorization")
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    if up
        .write_all(head.as_bytes())
        .and_then(|_| up.write_all(&req.body))
        .is_err()
    {
        return respond(&mut out, "502 Bad Gateway", &[], b"upstream write failed");
    }
    let mut upr = BufReader::new(up);
    let Some((status_line, rheaders)) = read_head(&mut upr) else {
        return respond(&mut out, "502 Bad Gateway", &[], b"upstream closed");
    };
    let no_body =
        req.method == "HEAD" || status_line.contains(" 204 ") || status_line.contains(" 304 ");
    let mut rbody = if no_body {
        Vec::new()
    } else {
        read_body(&mut upr, &rheaders, true)
    };
    let status = status_line
        .split_once(' ')
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    let blob_get = req.method == "GET"
        && req.path.contains("/blobs/sha256:")
        && status.starts_with("20")
        && rbody.len() > 64;
    let mut promised = rbody.len();
    let mut cut = false;
    if blob_get && take(&faults.drop_blob_mid_body) {
        cut = true;
    } else if blob_get && take(&faults.truncate_blob) {
        rbody.truncate(rbody.len() / 2);
        promised = rbody.len();
    } else if blob_get && take(&faults.flip_blob_byte) {
        let i = rbody.len() / 3;
        rbody[i] ^= 0x5a;
    }
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in &rheaders {
        let k_l = k.to_ascii_lowercase();
        if k_l == "connection" || k_l == "transfer-encoding" || k_l == "content-length" {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if no_body {
        if let Some((_, v)) = rheaders
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            head.push_str(&format!("Content-Length: {v}\r\n"));
        }
    } else {
        head.push_str(&format!("Content-Length: {promised}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let _ = out.write_all(head.as_bytes());
    if !no_body {
        let sent = if cut {
            &rbody[..rbody.len() / 2]
        } else {
            &rbody[..]
        };
        let _ = out.write_all(sent);
    }
    let _ = out.flush();
}

fn token(out: &mut TcpStream, req: &Request, auth: &BearerAuth) {
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", auth.user, auth.password));
    let given = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .unwrap_or_default();
    if given != expected {
        return respond(
            out,
            "401 Unauthorized",
            &[("Content-Type", "application/json".into())],
            br#"{"details":"incorrect username or password"}"#,
        );
    }
    let n = auth.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let t = format!("tok-{n}-{}", std::process::id());
    auth.issued.lock().unwrap().insert(t.clone());
    let body = format!(r#"{{"token":"{t}","expires_in":300}}"#);
    respond(
        out,
        "200 OK",
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
    );
}
