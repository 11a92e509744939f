//! Credentials in Docker's `config.json`: `auths` entries, a `credsStore` and per-registry
//! `credHelpers` (the `docker-credential-NAME` programs), read and written the way Docker
//! does, so `docker login` and `kiln login` share them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::auth::Credentials;
use super::{RegistryError, Result};

/// The key Docker files Docker Hub's credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The Docker config directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".docker")
}

/// The key a registry's credentials live under (`docker.io` means Docker Hub's URL).
pub fn key_for(host: &str) -> String {
    if host == snapshotter::reference::DEFAULT_REGISTRY
        || host == "index.docker.io"
        || host == "registry-1.docker.io"
    {
        DOCKER_HUB_KEY.to_string()
    } else {
        host.to_string()
    }
}

/// Docker's `config.json`, kept as JSON so fields kiln does not know survive a rewrite.
#[derive(Debug)]
pub struct DockerConfig {
    path: PathBuf,
    doc: Map<String, Value>,
    /// Where helper programs are looked up first (tests); `PATH` otherwise.
    helper_dir: Option<PathBuf>,
}

fn cred_err(msg: String) -> RegistryError {
    RegistryError::Credentials(msg)
}

impl DockerConfig {
    /// Reads `dir/config.json` (an absent file is an empty config).
    pub fn load(dir: &Path) -> Result<DockerConfig> {
        let path = dir.join("config.json");
        let doc = match std::fs::read(&path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(b) => match serde_json::from_slice::<Value>(&b) {
                Ok(Value::Object(m)) => m,
                _ => return Err(cred_err(format!("{}: not a JSON object", path.display()))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(cred_err(format!("read {}: {e}", path.display()))),
        };
        Ok(DockerConfig {
            path,
            doc,
            helper_dir: None,
        })
    }

    fn helper_for(&self, key: &str) -> Option<String> {
        let per_host = self
            .doc
            .get("credHelpers")
            .and_then(|h| h.get(key))
            .and_then(Value::as_str);
        per_host
            .or_else(|| self.doc.get("credsStore").and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// The credentials for `host`, from its helper or its `auths` entry.
    pub fn get(&self, host: &str) -> Result<Option<Credentials>> {
        let key = key_for(host);
        if let Some(helper) = self.helper_for(&key) {
            return self.helper_get(&helper, &key);
        }
        let Some(entry) = self.doc.get("auths").and_then(|a| a.get(&key)) else {
            return Ok(None);
        };
        if let Some(token) = entry.get("identitytoken").and_then(Value::as_str) {
            return Ok(Some(Credentials {
                username: "<token>".into(),
                secret: token.into(),
            }));
        }
        let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return Ok(None);
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| {
                cred_err(format!(
                    "{}: auths.{key}.auth is not base64",
                    self.path.display()
                ))
            })?;
        let raw = String::from_utf8(raw).map_err(|_| {
            cred_err(format!(
                "{}: auths.{key}.auth is not text",
                self.path.display()
            ))
        })?;
        let (user, secret) = raw.split_once(':').ok_or_else(|| {
            cred_err(format!(
                "{}: auths.{key}.auth has no ':'",
                self.path.display()
            ))
        })?;
        Ok(Some(Credentials {
            username: user.into(),
            secret: secret.into(),
        }))
    }

    /// Saves credentials for `host` (through its helper when one is configured).
    pub fn store(&mut self, host: &str, creds: &Credentials) -> Result<()> {
        let key = key_for(host);
        if let Some(helper) = self.helper_for(&key) {
            let input = serde_json::json!({"ServerURL": key, "Username": creds.username, "Secret": creds.secret});
            self.helper_call(&helper, "store", &input.to_string())?;
            // Docker leaves an empty entry so `docker info` lists the registry.
            self.auths().insert(key, Value::Object(Map::new()));
        } else {
            let auth = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", creds.username, creds.secret));
            self.auths()
                .insert(key, serde_json::json!({ "auth": auth }));
        }
        self.save()
    }

    /// Forgets `host`'s credentials; returns whether there were any.
    pub fn erase(&mut self, host: &str) -> Result<bool> {
        let key = key_for(host);
        let mut had = self.auths().remove(&key).is_some();
        if let Some(helper) = self.helper_for(&key) {
            had |= self.helper_call(&helper, "erase", &key).is_ok();
        }
        if had {
            self.save()?;
        }
        Ok(had)
    }

    fn helper_call(&self, helper: &str, verb: &str, input: &str) -> Result<String> {
        let program = format!("docker-credential-{helper}");
        let exe = self
            .helper_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(&program), |d| d.join(&program));
        let mut child = Command::new(exe)
            .arg(verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| cred_err(format!("credential helper {program}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| cred_err(format!("credential helper {program}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            let why = if stdout.is_empty() {
                String::from_utf8_lossy(&out.stderr).trim().to_string()
            } else {
                stdout
            };
            return Err(cred_err(format!(
                "credential helper {program} {verb}: {why}"
            )));
        }
        Ok(stdout)
    }

    fn helper_get(&self, helper: &str, key: &str) -> Result<Option<Credentials>> {
        let out = match self.helper_call(helper, "get", key) {
            Ok(out) => out,
            // The helper protocol's answer for "nothing stored".
            Err(RegistryError::Credentials(m)) if m.contains("credentials not found") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let v: Value = serde_json::from_str(&out).map_err(|_| {
            cred_err(format!(
                "credential helper docker-credential-{helper}: answer is not JSON"
            ))
        })?;
        let user = v
            .get("Username")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let secret = v.get("Secret").and_then(Value::as_str).unwrap_or_default();
        if secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            username: user.into(),
            secret: secret.into(),
        }))
    }

    fn auths(&mut self) -> &mut Map<String, Value> {
        let v = self
            .doc
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !v.is_object() {
            *v = Value::Object(Map::new());
        }
        v.as_object_mut().expect("made an object above")
    }

    /// Writes the file atomically with mode 0600 (it holds secrets).
    fn save(&self) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| cred_err(format!("create {}: {e}", dir.display())))?;
        let tmp = dir.join(format!(".config.json.{}", std::process::id()));
        let body = serde_json::to_vec_pretty(&Value::Object(self.doc.clone()))
            .expect("json values serialize");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            cred_err(format!("write {}: {e}", self.path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            secret: p.into(),
        }
    }

    #[test]
    fn store_get_erase_round_trip_keeps_other_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"psFormat":"x","auths":{"other:1":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        let mut cfg = DockerConfig::load(dir.path()).unwrap();
        cfg.store("127.0.0.1:5000", &creds("alice", "s3:cret"))
            .unwrap();
        let cfg = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(
            cfg.get("127.0.0.1:5000").unwrap(),
            Some(creds("alice", "s3:cret"))
        );
        assert_eq!(cfg.get("other:1").unwrap(), Some(creds("a", "b")));
        assert_eq!(cfg.get("nowhere").unwrap(), None);
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(text.contains("psFormat"), "{text}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut cfg = DockerConfig::load(dir.path()).unwrap();
        assert!(cfg.erase("127.0.0.1:5000").unwrap());
        assert!(!cfg.erase("127.0.0.1:5000").unwrap());
        assert_eq!(
            DockerConfig::load(dir.path())
                .unwrap()
                .get("127.0.0.1:5000")
                .unwrap(),
            None
        );
    }

    #[test]
    fn docker_hub_uses_its_url_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = DockerConfig::load(dir.path()).unwrap();
        cfg.store("docker.io", &creds("u", "p")).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        assert!(text.contains(DOCKER_HUB_KEY), "{text}");
    }

    #[test]
    fn helpers_are_called_with_the_docker_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        // A helper that remembers one secret in a file, as docker-credential-pass would.
        let script = format!(
            "#!/bin/sh\nstate={}/state\ncase $1 in\n store) cat > $state ;;\n get) read k; if [ -f $state ]; then sed 's/ServerURL/X/' $state; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n erase) rm -f $state ;;\nesac\n",
            dir.path().display()
        );
        let helper = bin.join("docker-credential-kilntest");
        std::fs::write(&helper, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers":{"reg:1":"kilntest"}}"#,
        )
        .unwrap();
        let mut cfg = DockerConfig::load(dir.path()).unwrap();
        cfg.helper_dir = Some(bin.clone());
        assert_eq!(cfg.get("reg:1").unwrap(), None);
        cfg.store("reg:1", &creds("bob", "pw")).unwrap();
        assert_eq!(cfg.get("reg:1").unwrap(), Some(creds("bob", "pw")));
        assert!(
            !std::fs::read_to_string(dir.path().join("config.json"))
                .unwrap()
                .contains("pw")
        );
        assert!(cfg.erase("reg:1").unwrap());
        assert_eq!(cfg.get("reg:1").unwrap(), None);
    }
}
