//! Instruction flags as BuildKit validates them: `--name=value` strings, repeatable lists,
//! booleans, and the values with a grammar of their own (`--mount`, `--chmod`, durations).

use std::collections::BTreeMap;
use std::time::Duration;

/// The flags of one instruction, checked against what it accepts.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    values: BTreeMap<String, Vec<String>>,
}

/// What kind of value a flag takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One string (`--from=x`).
    Str,
    /// A string that may be given several times (`--mount`, `--exclude`).
    List,
    /// A boolean (`--link`, `--link=false`).
    Bool,
}

impl Flags {
    /// Parses `raw` (`--name[=value]`, as the parser split them) against `spec`.
    pub(crate) fn parse(raw: &[String], spec: &[(&str, Kind)]) -> Result<Flags, String> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in raw {
            let body = f
                .strip_prefix("--")
                .ok_or_else(|| format!("invalid flag: {f}"))?;
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let kind = spec
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
                .ok_or_else(|| format!("unknown flag: {name}"))?;
            let value = match (kind, value) {
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => "true".into(),
                    "false" | "0" => "false".into(),
                    _ => return Err(format!("expecting boolean value for flag {name}, not: {v}")),
                },
                (_, None) => return Err(format!("missing a value on flag: {name}")),
                (_, Some(v)) => v.to_string(),
            };
            let slot = values.entry(name.to_string()).or_default();
            if kind != Kind::List && !slot.is_empty() {
                return Err(format!("duplicate flag specified: {name}"));
            }
            slot.push(value);
        }
        Ok(Flags { values })
    }

    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.first().cloned())
    }

    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }
}

/// `RUN --mount` kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A directory from the context or another stage.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// A fresh tmpfs.
    Tmpfs,
    /// A secret file.
    Secret,
    /// The SSH agent socket.
    Ssh,
}

/// Cache sharing modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Concurrent builds share it.
    Shared,
    /// Concurrent builds get their own copy.
    Private,
    /// Concurrent builds wait.
    Locked,
}

/// One `RUN --mount=...`, values unexpanded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    /// `type`.
    pub kind: MountKind,
    /// `target`/`dst`/`destination`.
    pub target: Option<String>,
    /// `source`/`src`.
    pub source: Option<String>,
    /// `from` (stage or image).
    pub from: Option<String>,
    /// `rw`/`readwrite` (or not `ro`).
    pub read_write: bool,
    /// `id`.
    pub id: Option<String>,
    /// `sharing` (cache).
    pub sharing: Sharing,
    /// `mode` (octal).
    pub mode: Option<u32>,
    /// `uid`.
    pub uid: Option<u32>,
    /// `gid`.
    pub gid: Option<u32>,
    /// `size` in bytes (tmpfs).
    pub size: Option<u64>,
    /// `required` (secret, ssh).
    pub required: bool,
    /// `env` (secret: expose it as this environment variable).
    pub env: Option<String>,
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid value for {k}: {v}")),
    }
}

/// Parses `type=cache,target=/root/.cache,sharing=locked,...` as BuildKit does.
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    let mut m = Mount {
        kind: MountKind::Bind,
        target: None,
        source: None,
        from: None,
        read_write: false,
        id: None,
        sharing: Sharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        required: false,
        env: None,
    };
    let fields: Vec<&str> = spec.split(',').filter(|f| !f.is_empty()).collect();
    // `type` decides the defaults of the others, so read it first.
    for f in &fields {
        if let Some(t) = f.strip_prefix("type=") {
            m.kind = match t.to_ascii_lowercase().as_str() {
                "bind" => MountKind::Bind,
                "cache" => MountKind::Cache,
                "tmpfs" => MountKind::Tmpfs,
                "secret" => MountKind::Secret,
                "ssh" => MountKind::Ssh,
                other => return Err(format!("unsupported mount type {other:?}")),
            };
        }
    }
    if m.kind == MountKind::Cache || m.kind == MountKind::Tmpfs {
        m.read_write = true;
    }
    for f in fields {
        let (k, v) = match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim()),
            None => (f.trim().to_ascii_lowercase(), ""),
        };
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("invalid value for {k}: {v}"))
        };
        match k.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = Some(v.to_string()),
            "source" | "src" => m.source = Some(v.to_string()),
            "from" => m.from = Some(v.to_string()),
            "readonly" | "ro" => {
                m.read_write = !parse_bool(&k, v)?;
            }
            "readwrite" | "rw" => {
                m.read_write = parse_bool(&k, v)?;
            }
            "id" => m.id = Some(v.to_string()),
            "sharing" => {
                m.sharing = match v.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => return Err(format!("unsupported sharing value {v:?}")),
                }
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(v, 8).map_err(|_| format!("invalid value {v} for mode"))?,
                )
            }
            "uid" => m.uid = Some(num(v)?),
            "gid" => m.gid = Some(num(v)?),
            "size" => {
                m.size = Some(parse_size(v).ok_or_else(|| format!("invalid value for size: {v}"))?)
            }
            "required" => m.required = parse_bool(&k, v)?,
            "env" => m.env = Some(v.to_string()),
            other => return Err(format!("unexpected key '{other}' in '{f}'")),
        }
    }
    match m.kind {
        MountKind::Secret | MountKind::Ssh => {}
        _ if m.target.is_none() => return Err("mount destination not specified".into()),
        _ => {}
    }
    if m.kind == MountKind::Tmpfs && (m.from.is_some() || m.source.is_some()) {
        return Err("tmpfs mounts take no from or source".into());
    }
    if m.kind != MountKind::Cache && m.sharing != Sharing::Shared {
        return Err("sharing is only allowed for cache mounts".into());
    }
    if m.kind == MountKind::Secret && m.id.is_none() && m.target.is_none() && m.env.is_none() {
        return Err("secret mount needs an id, a target or an env".into());
    }
    Ok(m)
}

/// `64m`, `1g`, `100k`, `512` (bytes), as Docker's `RAMInBytes` reads sizes.
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let digits = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let n: f64 = v[..digits].parse().ok()?;
    let mult: u64 = match v[digits..].trim_end_matches(['b', 'i']) {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

/// `--chmod` values: octal (`0755`) or symbolic (`u+x,go-w`), as BuildKit 1.14+ accepts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Chmod {
    /// An octal mode.
    Octal(u32),
    /// A symbolic mode, validated.
    Symbolic(String),
}

/// Parses a `--chmod` value (values with `$` are checked after expansion by the builder).
pub fn parse_chmod(v: &str) -> Result<Chmod, String> {
    if !v.is_empty() && v.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        let m = u32::from_str_radix(v, 8).map_err(|_| format!("invalid chmod parameter {v}"))?;
        if m > 0o7777 {
            return Err(format!("invalid chmod parameter {v}"));
        }
        return Ok(Chmod::Octal(m));
    }
    let clause_ok = |c: &str| {
        let who = c.find(['+', '-', '=']).unwrap_or(c.len());
        if who == c.len() || !c[..who].bytes().all(|b| b"ugoa".contains(&b)) {
            return false;
        }
        let mut rest = &c[who..];
        while !rest.is_empty() {
            let op = rest.as_bytes()[0];
            if !b"+-=".contains(&op) {
                return false;
            }
            rest = &rest[1..];
            let perms = rest.find(['+', '-', '=']).unwrap_or(rest.len());
            let p = &rest[..perms];
            if !(p.bytes().all(|b| b"rwxXst".contains(&b)) || matches!(p, "u" | "g" | "o")) {
                return false;
            }
            rest = &rest[perms..];
        }
        true
    };
    if !v.is_empty() && v.split(',').all(clause_ok) {
        Ok(Chmod::Symbolic(v.to_string()))
    } else {
        Err(format!("invalid chmod parameter {v}"))
    }
}

/// A Go duration (`1m30s`, `500ms`, `2h`), as HEALTHCHECK flags take them.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration \"{v}\"");
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = v;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * secs;
        rest = &rest[u..];
    }
    // Go keeps a duration in an int64 of nanoseconds (about 292 years) and calls a longer
    // one invalid, as it calls any other it cannot hold.
    if total * 1e9 > i64::MAX as f64 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_kinds_duplicates_and_unknowns() {
        let spec = [
            ("from", Kind::Str),
            ("link", Kind::Bool),
            ("exclude", Kind::List),
        ];
        let raw = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let f = Flags::parse(
            &raw(&["--from=a", "--link", "--exclude=x", "--exclude=y"]),
            &spec,
        )
        .unwrap();
        assert_eq!(
            (f.string("from"), f.bool("link"), f.list("exclude")),
            (Some("a".into()), Some(true), vec!["x".into(), "y".into()])
        );
        assert_eq!(
            Flags::parse(&raw(&["--link=false"]), &spec)
                .unwrap()
                .bool("link"),
            Some(false)
        );
        assert_eq!(
            Flags::parse(&raw(&["--bogus"]), &spec).unwrap_err(),
            "unknown flag: bogus"
        );
        assert_eq!(
            Flags::parse(&raw(&["--from"]), &spec).unwrap_err(),
            "missing a value on flag: from"
        );
        assert_eq!(
            Flags::parse(&raw(&["--from=a", "--from=b"]), &spec).unwrap_err(),
            "duplicate flag specified: from"
        );
        assert!(
            Flags::parse(&raw(&["--link=maybe"]), &spec)
                .unwrap_err()
                .contains("expecting boolean")
        );
    }

    #[test]
    fn mounts() {
        let m = parse_mount(
            "type=cache,target=/root/.cache,sharing=locked,id=go,mode=0755,uid=1,gid=2",
        )
        .unwrap();
        assert_eq!(
            (m.kind, m.sharing, m.read_write, m.mode, m.uid, m.gid),
            (
                MountKind::Cache,
                Sharing::Locked,
                true,
                Some(0o755),
                Some(1),
                Some(2)
            )
        );
        let m = parse_mount("target=/src,from=build,source=/out,rw").unwrap();
        assert_eq!(
            (m.kind, m.read_write, m.from.as_deref(), m.source.as_deref()),
            (MountKind::Bind, true, Some("build"), Some("/out"))
        );
        let m = parse_mount("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(m.size, Some(64 << 20));
        let m = parse_mount("type=secret,id=tok,env=TOKEN,required").unwrap();
        assert!(m.required && m.env.as_deref() == Some("TOKEN"));
        assert!(parse_mount("type=ssh").is_ok());
        assert!(
            parse_mount("type=bind")
                .unwrap_err()
                .contains("destination")
        );
        assert!(parse_mount("type=nfs,target=/x").is_err());
        assert!(parse_mount("type=cache,target=/x,sharing=weird").is_err());
        assert!(parse_mount("type=bind,target=/x,sharing=locked").is_err());
        assert!(parse_mount("type=tmpfs,target=/x,from=a").is_err());
        assert!(
            parse_mount("target=/x,colour=blue")
                .unwrap_err()
                .contains("unexpected key")
        );
    }

    #[test]
    fn chmod_values() {
        assert_eq!(parse_chmod("0755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(parse_chmod("644").unwrap(), Chmod::Octal(0o644));
        assert_eq!(
            parse_chmod("u+x,go-w").unwrap(),
            Chmod::Symbolic("u+x,go-w".into())
        );
        assert_eq!(parse_chmod("a=rX").unwrap(), Chmod::Symbolic("a=rX".into()));
        for bad in ["", "999", "17777", "u+q", "x+r", "u", "rwx"] {
            assert!(parse_chmod(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("2562047h").unwrap(),
            Duration::from_secs(2562047 * 3600)
        );
        let huge = format!("3{}s", "7".repeat(80));
        for bad in ["", "5", "s", "1x", "-1s", "2562048h", &huge] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
