//! [`push()`]: an image from the store to a registry.

use oci_spec::image::Descriptor;
use snapshotter::image::StoredImage;
use snapshotter::{Digest, Reference, Store};

use super::retry::RetryPolicy;
use super::{OCI_MANIFEST, Registry, RegistryError, Result, TransferProgress};

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Blobs uploaded at once.
    pub max_concurrent: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Repositories on the same registry that may already hold some blobs; the registry is
    /// asked to mount from them before anything is uploaded.
    pub mount_from: Vec<String>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            max_concurrent: 3,
            retry: RetryPolicy::default(),
            mount_from: Vec::new(),
        }
    }
}

/// What a push did.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// The manifest's digest in the registry.
    pub digest: Digest,
    /// Blobs that were uploaded (the rest existed or were mounted).
    pub uploaded: usize,
}

/// Pushes `image` to `dest` (its tag, or its digest when it has no tag).
pub fn push(
    registry: &dyn Registry,
    store: &dyn Store,
    image: &StoredImage,
    dest: &Reference,
    options: &PushOptions,
    progress: &dyn TransferProgress,
) -> Result<Pushed> {
    let repo = dest.repository();
    let mut blobs: Vec<Descriptor> = vec![image.manifest.config().clone()];
    blobs.extend(image.manifest.layers().iter().cloned());
    let uploaded = send_blobs(registry, store, repo, &blobs, options, progress)?;

    let digest = Digest::try_from(image.descriptor.digest())?;
    let bytes = store.read_verified(&digest)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let target = match (dest.tag(), dest.digest()) {
        (Some(t), _) => t.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => "latest".to_string(),
    };
    let reported = options.retry.run(
        |_| registry.put_manifest(repo, &target, &media_type, &bytes),
        |e| progress.retry("manifest", &e.to_string()),
    )?;
    if reported != digest {
        return Err(RegistryError::DigestMismatch {
            what: format!("manifest pushed to {}/{repo}:{target}", registry.host()),
            expected: digest,
            actual: reported,
        });
    }
    Ok(Pushed { digest, uploaded })
}

/// Makes `blobs` present in the repository (HEAD, mount, upload); returns how many were
/// uploaded.
pub fn send_blobs(
    registry: &dyn Registry,
    store: &dyn Store,
    repo: &str,
    blobs: &[Descriptor],
    options: &PushOptions,
    progress: &dyn TransferProgress,
) -> Result<usize> {
    let sent = super::each_blob(blobs, options.max_concurrent, &|desc| {
        send_blob(registry, store, repo, desc, options, progress)
    })?;
    Ok(sent.into_iter().filter(|uploaded| *uploaded).count())
}

/// Makes one blob present in the repository; returns whether it had to be uploaded.
fn send_blob(
    registry: &dyn Registry,
    store: &dyn Store,
    repo: &str,
    desc: &Descriptor,
    options: &PushOptions,
    progress: &dyn TransferProgress,
) -> Result<bool> {
    let digest = Digest::try_from(desc.digest())?;
    let id = digest.short().to_string();
    let retry = |e: &RegistryError| progress.retry(&id, &e.to_string());
    if options
        .retry
        .run(|_| registry.blob_size(repo, &digest), retry)?
        .is_some()
    {
        progress.finish(&id, "layer already exists");
        return Ok(false);
    }
    for from in options.mount_from.iter().filter(|f| f.as_str() != repo) {
        if options
            .retry
            .run(|_| registry.mount_blob(repo, &digest, from), retry)?
        {
            progress.finish(&id, &format!("mounted from {from}"));
            return Ok(false);
        }
    }
    options.retry.run(
        |_| {
            progress.start(&id, "pushing", desc.size());
            let mut data = store.open(&digest)?;
            registry.upload_blob(repo, &digest, desc.size(), &mut data, &|n| {
                progress.advance(&id, n)
            })
        },
        retry,
    )?;
    progress.finish(&id, "pushed");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MemRegistry, NoProgress, PullOptions, pull};
    use snapshotter::MemStore;
    use snapshotter::layer::import_tar;

    fn image(store: &MemStore) -> StoredImage {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hello", &b"world"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let layer = import_tar(store, &data[..]).unwrap();
        let config = snapshotter::config::ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: snapshotter::config::RootFs {
                kind: "layers".into(),
                diff_ids: vec![layer.diff_id.to_string()],
            },
            ..Default::default()
        };
        snapshotter::image::write_image(store, &config, &[layer]).unwrap()
    }

    #[test]
    fn push_then_pull_keeps_digests_and_skips_what_exists() {
        let reg = MemRegistry::new();
        let store = MemStore::new();
        let img = image(&store);
        let dest: Reference = "localhost/team/app:v1".parse().unwrap();
        let pushed = push(
            &reg,
            &store,
            &img,
            &dest,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(
            pushed.digest.to_string(),
            img.descriptor.digest().to_string()
        );
        assert_eq!(pushed.uploaded, 2);
        // Again: nothing to upload.
        assert_eq!(
            push(
                &reg,
                &store,
                &img,
                &dest,
                &PushOptions::default(),
                &NoProgress
            )
            .unwrap()
            .uploaded,
            0
        );
        // To another repository: mounted, not uploaded.
        let other: Reference = "localhost/team/copy:v1".parse().unwrap();
        let opts = PushOptions {
            mount_from: vec!["team/app".into()],
            ..Default::default()
        };
        assert_eq!(
            push(&reg, &store, &img, &other, &opts, &NoProgress)
                .unwrap()
                .uploaded,
            0
        );
        assert_eq!(reg.uploads(), 2);
        let fresh = MemStore::new();
        let pulled = pull(&reg, &fresh, &other, &PullOptions::default(), &NoProgress).unwrap();
        assert_eq!(pulled.image.id(), img.id());
        assert_eq!(pulled.repo_digest, pushed.digest);
    }
}
