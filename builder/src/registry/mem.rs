//! [`MemRegistry`]: an in-memory registry, the test double of the [`Registry`] seam.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Mutex;

use snapshotter::Digest;

use super::{BlobStream, FetchedManifest, Registry, RegistryError, Result};

#[derive(Default)]
struct Repo {
    blobs: HashMap<Digest, Vec<u8>>,
    manifests: HashMap<String, (String, Vec<u8>)>,
}

/// An in-memory registry. It can be told to fail the next few blob downloads part-way
/// ([`MemRegistry::fail_downloads`]) to exercise retries.
#[derive(Default)]
pub struct MemRegistry {
    repos: Mutex<BTreeMap<String, Repo>>,
    failures: Mutex<u32>,
    uploads: Mutex<u32>,
}

impl MemRegistry {
    /// An empty registry.
    pub fn new() -> MemRegistry {
        MemRegistry::default()
    }

    /// Stores a blob directly.
    pub fn insert_blob(&self, repo: &str, bytes: Vec<u8>) -> Digest {
        let d = Digest::of(&bytes);
        self.repos
            .lock()
            .expect("lock")
            .entry(repo.into())
            .or_default()
            .blobs
            .insert(d.clone(), bytes);
        d
    }

    /// Makes the next `n` blob downloads break after half their bytes.
    pub fn fail_downloads(&self, n: u32) {
        *self.failures.lock().expect("lock") = n;
    }

    /// How many blob uploads happened (mounts and skipped blobs do not count).
    pub fn uploads(&self) -> u32 {
        *self.uploads.lock().expect("lock")
    }

    fn not_found(what: String) -> RegistryError {
        RegistryError::NotFound { what }
    }
}

/// A stream that fails with a reset after its bytes.
struct Breaking(std::io::Cursor<Vec<u8>>);

impl Read for Breaking {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset (injected)",
            )),
            n => Ok(n),
        }
    }
}

impl Registry for MemRegistry {
    fn host(&self) -> &str {
        "mem"
    }

    fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn fetch_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let repos = self.repos.lock().expect("lock");
        let (media_type, bytes) = repos
            .get(repo)
            .and_then(|r| r.manifests.get(reference))
            .cloned()
            .ok_or_else(|| Self::not_found(format!("manifest mem/{repo}:{reference}")))?;
        Ok(FetchedManifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type,
        })
    }

    fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let repos = self.repos.lock().expect("lock");
        Ok(repos
            .get(repo)
            .and_then(|r| r.blobs.get(digest))
            .map(|b| b.len() as u64))
    }

    fn fetch_blob(&self, repo: &str, digest: &Digest, offset: u64) -> Result<(BlobStream, u64)> {
        let bytes = {
            let repos = self.repos.lock().expect("lock");
            repos
                .get(repo)
                .and_then(|r| r.blobs.get(digest))
                .cloned()
                .ok_or_else(|| Self::not_found(format!("blob {digest}")))?
        };
        let tail = bytes[(offset as usize).min(bytes.len())..].to_vec();
        let mut failures = self.failures.lock().expect("lock");
        if *failures > 0 {
            *failures -= 1;
            let half = tail[..tail.len() / 2].to_vec();
            return Ok((Box::new(Breaking(std::io::Cursor::new(half))), offset));
        }
        Ok((Box::new(std::io::Cursor::new(tail)), offset))
    }

    fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool> {
        let mut repos = self.repos.lock().expect("lock");
        let Some(bytes) = repos.get(from).and_then(|r| r.blobs.get(digest)).cloned() else {
            return Ok(false);
        };
        repos
            .entry(repo.into())
            .or_default()
            .blobs
            .insert(digest.clone(), bytes);
        Ok(true)
    }

    fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        data: &mut dyn Read,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes)
            .map_err(|e| RegistryError::Store(snapshotter::StoreError::Stream("read blob", e)))?;
        let actual = Digest::of(&bytes);
        if &actual != digest || bytes.len() as u64 != size {
            return Err(RegistryError::Status {
                host: "mem".into(),
                op: "upload".into(),
                status: 400,
                detail: "digest invalid".into(),
            });
        }
        sent(size);
        *self.uploads.lock().expect("lock") += 1;
        self.repos
            .lock()
            .expect("lock")
            .entry(repo.into())
            .or_default()
            .blobs
            .insert(actual, bytes);
        Ok(())
    }

    fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let d = Digest::of(bytes);
        let mut repos = self.repos.lock().expect("lock");
        let r = repos.entry(repo.into()).or_default();
        r.manifests
            .insert(reference.into(), (media_type.into(), bytes.to_vec()));
        r.manifests
            .insert(d.to_string(), (media_type.into(), bytes.to_vec()));
        Ok(d)
    }

    fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let repos = self.repos.lock().expect("lock");
        let r = repos
            .get(repo)
            .ok_or_else(|| Self::not_found(format!("repository mem/{repo}")))?;
        let mut tags: Vec<String> = r
            .manifests
            .keys()
            .filter(|k| !k.starts_with("sha256:"))
            .cloned()
            .collect();
        tags.sort();
        Ok(tags)
    }

    fn catalog(&self, limit: usize) -> Result<Vec<String>> {
        Ok(self
            .repos
            .lock()
            .expect("lock")
            .keys()
            .take(limit)
            .cloned()
            .collect())
    }
}
