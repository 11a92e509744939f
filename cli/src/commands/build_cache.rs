//! `kiln build --cache-to` / `--cache-from`: the build cache in a registry or a directory.

use std::collections::HashMap;
use std::path::PathBuf;

use builder::cache::CacheEntry;
use builder::registry::{
    HttpRegistry, NoProgress, PullOptions, Registry as _, RegistryOptions, fetch_blob,
};
use builder::remote_cache::{
    CacheLog, ExportMode, RemoteCache, export_to_dir, export_to_registry, import_from_dir,
    import_from_registry,
};
use snapshotter::{Digest, FsStore, Reference, Store as _};

/// One `--cache-to`/`--cache-from` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CacheSpec {
    /// `type=registry,ref=REF[,mode=min|max]` (or a bare `REF`).
    Registry { reference: String, mode: ExportMode },
    /// `type=local,dest=DIR` / `type=local,src=DIR`.
    Local { dir: PathBuf, mode: ExportMode },
    /// `type=inline`: in the image's own config (min mode).
    Inline,
}

/// Parses a cache spec the way buildx writes them.
pub(crate) fn parse_spec(spec: &str, exporting: bool) -> anyhow::Result<CacheSpec> {
    if !spec.contains('=') {
        return Ok(CacheSpec::Registry {
            reference: spec.to_string(),
            mode: ExportMode::Min,
        });
    }
    let (mut kind, mut reference, mut dir, mut mode) = (None, None, None, ExportMode::Min);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => kind = Some(v.to_string()),
            Some(("ref", v)) => reference = Some(v.to_string()),
            Some(("dest", v)) if exporting => dir = Some(PathBuf::from(v)),
            Some(("src", v)) if !exporting => dir = Some(PathBuf::from(v)),
            Some(("mode", "min")) => mode = ExportMode::Min,
            Some(("mode", "max")) => mode = ExportMode::Max,
            Some(("compression" | "oci-mediatypes" | "ignore-error", _)) => {}
            _ => anyhow::bail!("cache spec {spec:?}: unknown field {part:?}"),
        }
    }
    match (kind.as_deref(), reference, dir) {
        (Some("registry") | None, Some(r), None) => Ok(CacheSpec::Registry { reference: r, mode }),
        (Some("local"), None, Some(d)) => Ok(CacheSpec::Local { dir: d, mode }),
        (Some("inline"), None, None) if exporting => Ok(CacheSpec::Inline),
        _ => anyhow::bail!(
            "cache spec {spec:?}: want type=registry,ref=REF or type=local,{}=DIR",
            if exporting { "dest" } else { "src" }
        ),
    }
}

/// Imports every `--cache-from`; a source that cannot be read is a warning, not a failure.
pub(crate) fn import(
    specs: &[String],
    root: &std::path::Path,
    reg: &RegistryOptions,
    warn: &dyn Fn(&str),
) -> Option<RemoteCache> {
    let mut entries: HashMap<Digest, CacheEntry> = HashMap::new();
    let mut sources: Vec<builder::remote_cache::BlobFetcher> = Vec::new();
    for spec in specs {
        let parsed = match parse_spec(spec, false) {
            Ok(p) => p,
            Err(e) => {
                warn(&format!("--cache-from {spec}: {e:#}; building without it"));
                continue;
            }
        };
        match parsed {
            CacheSpec::Registry { reference, .. } => {
                let got = reg
                    .qualify(&reference)
                    .map_err(anyhow::Error::from)
                    .and_then(|r| {
                        let client = HttpRegistry::new(r.registry(), reg)?;
                        let found = import_from_registry(&client, &r)?;
                        Ok((r, client, found))
                    });
                match got {
                    Ok((r, client, found)) => {
                        entries.extend(found);
                        let repo = r.repository().to_string();
                        let root = root.to_path_buf();
                        sources.push(Box::new(move |d| {
                            let store = FsStore::open(&root).map_err(|e| e.to_string())?;
                            fetch_blob(
                                &client,
                                &store,
                                &repo,
                                d,
                                &PullOptions::default(),
                                &NoProgress,
                            )
                            .map_err(|e| e.to_string())
                        }));
                    }
                    Err(e) => warn(&format!("--cache-from {spec}: {e:#}; building without it")),
                }
            }
            CacheSpec::Inline => warn(&format!(
                "--cache-from {spec}: name the image instead (--cache-from REF)"
            )),
            CacheSpec::Local { dir, .. } => match import_from_dir(&dir) {
                Ok((found, src)) => {
                    entries.extend(found);
                    let root = root.to_path_buf();
                    sources.push(Box::new(move |d| {
                        let store = FsStore::open(&root).map_err(|e| e.to_string())?;
                        let digest = Digest::try_from(d.digest()).map_err(|e| e.to_string())?;
                        let mut r = src.open(&digest).map_err(|e| e.to_string())?;
                        store
                            .put(&mut r, Some(&digest))
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }));
                }
                Err(e) => warn(&format!("--cache-from {spec}: {e}; building without it")),
            },
        }
    }
    if entries.is_empty() && sources.is_empty() {
        return None;
    }
    Some(RemoteCache::new(
        entries,
        Box::new(move |d| {
            let mut last = String::from("no cache source has it");
            for s in &sources {
                match s(d) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }),
    ))
}

/// Whether a `--cache-to` asks for the cache in the image itself.
pub(crate) fn wants_inline(specs: &[String]) -> bool {
    specs
        .iter()
        .any(|s| parse_spec(s, true).is_ok_and(|c| c == CacheSpec::Inline))
}

/// Exports the build's cache to every `--cache-to`.
pub(crate) fn export(
    specs: &[String],
    store: &FsStore,
    reg: &RegistryOptions,
    log: &CacheLog,
) -> anyhow::Result<()> {
    for spec in specs {
        match parse_spec(spec, true)? {
            CacheSpec::Registry { reference, mode } => {
                let dest: Reference = reg.qualify(&reference)?;
                let client = HttpRegistry::new(dest.registry(), reg)?;
                client.ping()?;
                export_to_registry(&client, store, &dest, &log.select(mode), &NoProgress)
                    .map_err(|e| anyhow::anyhow!("--cache-to {spec}: {e}"))?;
            }
            // Written into the image's config by the builder.
            CacheSpec::Inline => {}
            CacheSpec::Local { dir, mode } => {
                export_to_dir(store, &dir, &log.select(mode))
                    .map_err(|e| anyhow::anyhow!("--cache-to {spec}: {e}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_like_buildx() {
        assert_eq!(
            parse_spec("type=registry,ref=r/c:1,mode=max", true).unwrap(),
            CacheSpec::Registry {
                reference: "r/c:1".into(),
                mode: ExportMode::Max
            }
        );
        assert_eq!(
            parse_spec("r/c:1", false).unwrap(),
            CacheSpec::Registry {
                reference: "r/c:1".into(),
                mode: ExportMode::Min
            }
        );
        assert_eq!(
            parse_spec("type=local,dest=/tmp/c", true).unwrap(),
            CacheSpec::Local {
                dir: "/tmp/c".into(),
                mode: ExportMode::Min
            }
        );
        assert!(parse_spec("type=local,dest=/tmp/c", false).is_err());
        assert_eq!(parse_spec("type=inline", true).unwrap(), CacheSpec::Inline);
        assert!(parse_spec("type=registry,bogus=1", true).is_err());
    }
}
