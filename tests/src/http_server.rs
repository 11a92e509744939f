//! A static file server on loopback for tests (ADD of URLs, git's dumb HTTP protocol).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;

/// `Last-Modified` of every file served.
pub const LAST_MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// Serves the files under `root` on `127.0.0.1:PORT` until the test process ends.
pub struct StaticServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl StaticServer {
    /// Starts serving `root`.
    pub fn start(root: PathBuf) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let root = root.clone();
                std::thread::spawn(move || {
                    let mut out = conn.try_clone().expect("clone");
                    let mut r = BufReader::new(conn);
                    let mut first = String::new();
                    if r.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l.trim().is_empty() {
                            break;
                        }
                    }
                    let mut parts = first.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts
                        .next()
                        .unwrap_or("/")
                        .split('?')
                        .next()
                        .unwrap_or("/")
                        .to_string();
                    let file = root.join(path.trim_start_matches('/'));
                    let body = if path.contains("..") {
                        None
                    } else {
                        std::fs::read(&file).ok().filter(|_| file.is_file())
                    };
                    let (status, body) = match body {
                        Some(b) => ("200 OK", b),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nLast-Modified: {LAST_MODIFIED}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = out.write_all(head.as_bytes());
                    if method != "HEAD" {
                        let _ = out.write_all(&body);
                    }
                });
            }
        });
        StaticServer { url }
    }
}
