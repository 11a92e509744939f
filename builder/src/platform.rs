//! Platforms (`os/arch[/variant]`) and creation timestamps.

use std::fmt;
use std::str::FromStr;

/// A target platform, in Go's spelling (`linux/amd64`, `linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ...
    pub variant: Option<String>,
}

impl Platform {
    /// The platform kiln runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_ascii_lowercase(),
                architecture: arch.to_ascii_lowercase(),
                variant: Some(v.to_ascii_lowercase()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch[/variant]"
            )),
        }
    }
}

/// The build's `SOURCE_DATE_EPOCH`: the build arg of that name when given (as BuildKit
/// takes it), else the environment variable; `None` when neither is set.
pub fn source_date_epoch(build_args: &[(String, String)]) -> Result<Option<u64>, String> {
    let given = build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok());
    given
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                format!("invalid SOURCE_DATE_EPOCH {v:?}: expected seconds since 1970")
            })
        })
        .transpose()
}

/// The creation time for new images: `epoch` (a `SOURCE_DATE_EPOCH`) when set (reproducible
/// builds), else now; RFC 3339 in UTC.
pub fn creation_time_at(epoch: Option<u64>) -> Result<String, String> {
    let secs = match epoch {
        Some(e) => i64::try_from(e).map_err(|_| format!("invalid SOURCE_DATE_EPOCH {e}"))?,
        None => time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| format!("invalid SOURCE_DATE_EPOCH: {e}"))?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("format time: {e}"))
}

/// [`creation_time_at`] with the environment's `SOURCE_DATE_EPOCH`.
pub fn creation_time() -> Result<String, String> {
    creation_time_at(source_date_epoch(&[])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        assert_eq!(Platform::host().os, "linux");
    }

    #[test]
    fn the_build_arg_sets_the_epoch() {
        let args = vec![("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string())];
        assert_eq!(source_date_epoch(&args).unwrap(), Some(1_700_000_000));
        assert_eq!(
            creation_time_at(Some(1_700_000_000)).unwrap(),
            "2023-11-14T22:13:20Z"
        );
        let bad = vec![("SOURCE_DATE_EPOCH".to_string(), "yesterday".to_string())];
        assert!(source_date_epoch(&bad).unwrap_err().contains("yesterday"));
    }
}
