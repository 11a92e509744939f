//! [`pull()`]: an image from a registry into the store, every byte verified.

use std::io::{Read, Write};

use oci_spec::image::{Descriptor, DescriptorBuilder, ImageManifest, MediaType};
use snapshotter::image::{StoredImage, read_image};
use snapshotter::store::BlobWriter;
use snapshotter::{Digest, Reference, Store, StoreError};

use super::retry::RetryPolicy;
use super::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, REPO_DIGEST_ANNOTATION,
    Registry, RegistryError, Result, TransferProgress,
};
use crate::Platform;

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The platform to pick from an index.
    pub platform: Platform,
    /// Blobs downloaded at once.
    pub max_concurrent: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: Platform::host(),
            max_concurrent: 3,
            retry: RetryPolicy::default(),
        }
    }
}

/// What a pull stored.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The image (the platform's manifest) as stored.
    pub image: StoredImage,
    /// The digest the reference resolved to in the registry (the index's, for an index).
    pub repo_digest: Digest,
    /// The name it is stored under.
    pub name: Reference,
}

/// Pulls `reference` from `registry` into `store` and names it `reference`.
///
/// Blobs already in the store are not downloaded. Every blob is verified against its
/// digest before it is published; a failed pull leaves no blob or name behind.
pub fn pull(
    registry: &dyn Registry,
    store: &dyn Store,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn TransferProgress,
) -> Result<Pulled> {
    let repo = reference.repository();
    let wanted = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    let fetch = |r: &str| {
        options.retry.run(
            |_| registry.fetch_manifest(repo, r),
            |e| progress.retry("manifest", &e.to_string()),
        )
    };
    let top = fetch(&wanted)?;
    if let Some(d) = reference.digest() {
        check_digest(&format!("manifest {reference}"), d, &top.digest)?;
    }
    let repo_digest = top.digest.clone();
    let manifest = match top.media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let (child, _) =
                select_platform(&top.bytes, &options.platform).map_err(|available| {
                    RegistryError::NoPlatform {
                        what: reference.to_string(),
                        platform: options.platform.to_string(),
                        available,
                    }
                })?;
            let m = fetch(&child.to_string())?;
            check_digest(
                &format!("manifest {}@{child}", reference.name()),
                &child,
                &m.digest,
            )?;
            m
        }
        _ => top,
    };
    if manifest.media_type != OCI_MANIFEST && manifest.media_type != DOCKER_MANIFEST {
        return Err(RegistryError::UnsupportedManifest {
            what: reference.to_string(),
            media_type: manifest.media_type,
        });
    }
    let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes)
        .map_err(|e| RegistryError::Malformed(format!("{reference}: malformed manifest: {e}")))?;
    let mut blobs = vec![parsed.config().clone()];
    blobs.extend(parsed.layers().iter().cloned());
    fetch_blobs(registry, store, repo, &blobs, options, progress)?;

    let (digest, size) = store.put_bytes(&manifest.bytes)?;
    check_digest(
        &format!("manifest of {reference}"),
        &manifest.digest,
        &digest,
    )?;
    let descriptor = DescriptorBuilder::default()
        .media_type(MediaType::from(manifest.media_type.as_str()))
        .digest(&digest)
        .size(size)
        .build()
        .expect("descriptor fields are set");
    let image = read_image(store, &descriptor)?;
    let named = with_repo_digest(descriptor, &format!("{}@{repo_digest}", reference.name()));
    store.tag(reference, &named)?;
    Ok(Pulled {
        image: StoredImage {
            descriptor: named,
            ..image
        },
        repo_digest,
        name: reference.clone(),
    })
}

/// The descriptor with the repo-digest annotation set (as `RepoDigests` shows it).
pub fn with_repo_digest(mut descriptor: Descriptor, repo_digest: &str) -> Descriptor {
    let mut ann = descriptor.annotations().clone().unwrap_or_default();
    ann.insert(REPO_DIGEST_ANNOTATION.to_string(), repo_digest.to_string());
    descriptor.set_annotations(Some(ann));
    descriptor
}

fn check_digest(what: &str, expected: &Digest, actual: &Digest) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(RegistryError::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        })
    }
}

/// Picks the manifest for `platform` from an index; returns its digest and media type, or
/// (as the error) the platforms the index offers.
pub fn select_platform(
    index: &[u8],
    platform: &Platform,
) -> std::result::Result<(Digest, String), String> {
    let v: serde_json::Value =
        serde_json::from_slice(index).map_err(|_| "a malformed index".to_string())?;
    let entries = v
        .get("manifests")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    let field = |e: &serde_json::Value, k: &str| {
        e.get("platform")
            .and_then(|p| p.get(k))
            .and_then(|x| x.as_str())
            .map(str::to_string)
    };
    // arm64 images usually say v8 or nothing; treat them alike.
    let norm_variant = |arch: &str, v: Option<String>| match (arch, v.as_deref()) {
        ("arm64", Some("v8")) => None,
        _ => v,
    };
    let wanted_variant = norm_variant(&platform.architecture, platform.variant.clone());
    let mut fallback = None;
    let mut offered = Vec::new();
    for e in &entries {
        let (Some(os), Some(arch)) = (field(e, "os"), field(e, "architecture")) else {
            continue;
        };
        let variant = norm_variant(&arch, field(e, "variant"));
        offered.push(match &variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        if os != platform.os || arch != platform.architecture {
            continue;
        }
        let digest = e
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse::<Digest>().ok());
        let media = e
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or(OCI_MANIFEST)
            .to_string();
        let Some(digest) = digest else { continue };
        if variant == wanted_variant {
            return Ok((digest, media));
        }
        if wanted_variant.is_none() && fallback.is_none() {
            fallback = Some((digest, media));
        }
    }
    fallback.ok_or_else(|| {
        if offered.is_empty() {
            "no platforms".to_string()
        } else {
            offered.join(", ")
        }
    })
}

fn fetch_blobs(
    registry: &dyn Registry,
    store: &dyn Store,
    repo: &str,
    blobs: &[Descriptor],
    options: &PullOptions,
    progress: &dyn TransferProgress,
) -> Result<()> {
    super::each_blob(blobs, options.max_concurrent, &|desc| {
        fetch_blob(registry, store, repo, desc, options, progress)
    })?;
    Ok(())
}

/// Downloads one blob into the store (nothing when it is there already), resuming with a
/// range request after a broken connection and starting afresh after corruption.
pub fn fetch_blob(
    registry: &dyn Registry,
    store: &dyn Store,
    repo: &str,
    desc: &Descriptor,
    options: &PullOptions,
    progress: &dyn TransferProgress,
) -> Result<()> {
    let digest = Digest::try_from(desc.digest())?;
    let id = digest.short().to_string();
    let size = desc.size();
    if store.contains(&digest)? {
        progress.finish(&id, "already exists");
        return Ok(());
    }
    let mut partial: Option<(Box<dyn BlobWriter>, u64)> = None;
    options.retry.run(
        |_| {
            let offset = partial.as_ref().map_or(0, |(_, n)| *n);
            let (stream, start) = registry.fetch_blob(repo, &digest, offset)?;
            if start != offset || partial.is_none() {
                partial = Some((store.writer()?, 0));
                progress.start(&id, "downloading", size);
            }
            let (writer, written) = partial.as_mut().expect("set above");
            let copied = copy_counted(stream, writer, size - *written, &id, progress);
            *written += copied.as_ref().map_or_else(|(n, _)| *n, |n| *n);
            if let Err((_, e)) = copied {
                return Err(RegistryError::Unreachable {
                    host: registry.host().to_string(),
                    reason: format!("download of blob {id} broke off: {e}"),
                });
            }
            if *written < size {
                return Err(RegistryError::Unreachable {
                    host: registry.host().to_string(),
                    reason: format!("blob {id} ended after {written} of {size} bytes"),
                });
            }
            let (writer, _) = partial.take().expect("set above");
            match writer.commit(Some(&digest)) {
                Ok(_) => Ok(()),
                Err(StoreError::DigestMismatch { expected, actual }) => {
                    Err(RegistryError::DigestMismatch {
                        what: format!("blob {expected} from {}/{repo}", registry.host()),
                        expected,
                        actual,
                    })
                }
                Err(e) => Err(e.into()),
            }
        },
        |e| progress.retry(&id, &e.to_string()),
    )?;
    progress.finish(&id, "pull complete");
    Ok(())
}

/// Copies at most `limit` bytes; returns how many were copied, with the error if it broke.
fn copy_counted(
    mut from: impl Read,
    to: &mut Box<dyn BlobWriter>,
    limit: u64,
    id: &str,
    progress: &dyn TransferProgress,
) -> std::result::Result<u64, (u64, std::io::Error)> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < limit {
        let want = (limit - done).min(buf.len() as u64) as usize;
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((done, e)),
        };
        to.write_all(&buf[..n]).map_err(|e| (done, e))?;
        done += n as u64;
        progress.advance(id, n as u64);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MemRegistry, NoProgress};
    use snapshotter::MemStore;
    use std::time::Duration;

    fn fast() -> PullOptions {
        PullOptions {
            retry: RetryPolicy {
                attempts: 4,
                first_backoff: Duration::from_millis(1),
            },
            ..Default::default()
        }
    }

    fn publish(reg: &MemRegistry, repo: &str, tag: &str, layers: &[&[u8]]) -> Digest {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#.to_vec();
        let cd = reg.insert_blob(repo, config.clone());
        let layer_json: Vec<String> = layers
            .iter()
            .map(|l| {
                let d = reg.insert_blob(repo, l.to_vec());
                format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#, l.len())
            })
            .collect();
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layer_json.join(",")
        );
        reg.put_manifest(repo, tag, OCI_MANIFEST, m.as_bytes())
            .unwrap()
    }

    #[test]
    fn pulls_by_tag_and_resumes_broken_downloads() {
        let reg = MemRegistry::new();
        let big = vec![7u8; 3 << 20];
        let digest = publish(&reg, "app", "1", &[b"one", &big]);
        reg.fail_downloads(2);
        let store = MemStore::new();
        let r: Reference = "localhost/app:1".parse().unwrap();
        let pulled = pull(&reg, &store, &r, &fast(), &NoProgress).unwrap();
        assert_eq!(pulled.repo_digest, digest);
        assert_eq!(pulled.image.manifest.layers().len(), 2);
        assert_eq!(
            store.resolve(&r).unwrap().unwrap().digest().to_string(),
            digest.to_string()
        );
        let ann = store
            .resolve(&r)
            .unwrap()
            .unwrap()
            .annotations()
            .clone()
            .unwrap();
        assert_eq!(
            ann[REPO_DIGEST_ANNOTATION],
            format!("localhost/app@{digest}")
        );
    }

    #[test]
    fn a_digest_reference_must_match() {
        let reg = MemRegistry::new();
        publish(&reg, "app", "1", &[b"x"]);
        let store = MemStore::new();
        let r: Reference = format!("localhost/app@{}", Digest::of(b"nothing"))
            .parse()
            .unwrap();
        let e = pull(&reg, &store, &r, &fast(), &NoProgress).unwrap_err();
        assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
        assert!(store.images().unwrap().is_empty());
    }

    #[test]
    fn missing_tags_and_unsupported_types_fail_cleanly() {
        let reg = MemRegistry::new();
        publish(&reg, "app", "1", &[b"x"]);
        reg.put_manifest(
            "app",
            "old",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"{}",
        )
        .unwrap();
        let store = MemStore::new();
        let e = pull(
            &reg,
            &store,
            &"localhost/app:2".parse().unwrap(),
            &fast(),
            &NoProgress,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "manifest mem/app:2 not found");
        let e = pull(
            &reg,
            &store,
            &"localhost/app:old".parse().unwrap(),
            &fast(),
            &NoProgress,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unsupported manifest type"), "{e}");
        assert!(store.images().unwrap().is_empty());
    }

    #[test]
    fn indexes_pick_the_platform() {
        let idx = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}}]}"#;
        let pick = |p: &str| {
            select_platform(idx, &p.parse().unwrap()).map(|(d, _)| d.hex()[..1].to_string())
        };
        assert_eq!(pick("linux/amd64").unwrap(), "2");
        assert_eq!(pick("linux/arm64").unwrap(), "1");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "1");
        assert_eq!(pick("linux/arm/v7").unwrap(), "3");
        assert_eq!(
            pick("linux/arm/v6").unwrap_err(),
            "linux/arm64, linux/amd64, linux/arm/v7"
        );
        assert!(pick("windows/amd64").is_err());
    }
}
