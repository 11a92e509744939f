//! Talking to registries: the [`Registry`] seam and what moves images across it.
//!
//! # Brief overview
//!
//! - [`Registry`]: the distribution-API operations kiln needs (manifests, blobs, uploads, tags,
//!   catalog) against one registry host. [`HttpRegistry`] speaks HTTP(S) with anonymous, basic
//!   and bearer-token auth; [`MemRegistry`] is the in-memory test double.
//! - [`pull()`] and [`push()`]: whole images between the store and a registry, several blobs in
//!   flight at once, every byte verified, retries with backoff and resumed downloads.
//! - [`credentials`]: the Docker `config.json` (`auths`, `credsStore`, `credHelpers`).
//! - [`RegistryOptions`]: plain HTTP for loopback and insecure registries, the default registry
//!   for short names.

pub mod auth;
pub mod credentials;
mod distribution;
mod http;
mod mem;
mod pull;
mod push;
pub mod retry;

use std::io::Read;

pub use distribution::SearchHit;
pub use http::HttpRegistry;
pub use mem::MemRegistry;
pub use pull::{PullOptions, Pulled, fetch_blob, pull, select_platform, with_repo_digest};
pub use push::{PushOptions, Pushed, push, send_blobs};
pub use retry::RetryPolicy;

use snapshotter::Digest;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest type kiln accepts, for `Accept` headers.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Annotation on a stored name recording the digest the registry knows it by
/// (`host/repo@sha256:...`), shown as `RepoDigests`.
pub const REPO_DIGEST_ANNOTATION: &str = "dev.kiln.repo-digest";

/// Why talking to a registry failed. Messages are one line, lower-case, and name the registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached (DNS, refused, reset, timeout).
    #[error("cannot reach registry {host}: {reason}")]
    Unreachable {
        /// `host[:port]`.
        host: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The registry's name does not resolve.
    #[error("unknown registry host {host}: {reason}")]
    UnknownHost {
        /// `host[:port]`.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// The registry refused the credentials (or wants some and has none).
    #[error("{host}: authentication required or credentials rejected ({detail})")]
    Unauthorized {
        /// `host[:port]`.
        host: String,
        /// The registry's words.
        detail: String,
    },
    /// A repository, tag, manifest or blob does not exist.
    #[error("{what} not found")]
    NotFound {
        /// `host/repo:tag`, or a blob digest.
        what: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{host}: {op}: unexpected status {status}: {detail}")]
    Status {
        /// `host[:port]`.
        host: String,
        /// What kiln asked for.
        op: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error text, shortened.
        detail: String,
    },
    /// A manifest of a type kiln does not handle.
    #[error("{what}: unsupported manifest type {media_type:?}")]
    UnsupportedManifest {
        /// The reference.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// No manifest of an index matches the platform.
    #[error("{what}: no image for platform {platform} (the index has {available})")]
    NoPlatform {
        /// The reference.
        what: String,
        /// The platform asked for.
        platform: String,
        /// The platforms it has.
        available: String,
    },
    /// Downloaded content did not hash to its digest.
    #[error("{what}: content does not match its digest (expected {expected}, got {actual})")]
    DigestMismatch {
        /// What was downloaded.
        what: String,
        /// The digest it was asked for by.
        expected: Digest,
        /// The digest it had.
        actual: Digest,
    },
    /// A document from the registry or the credentials file is malformed.
    #[error("{0}")]
    Malformed(String),
    /// Storing what was fetched failed.
    #[error(transparent)]
    Store(#[from] snapshotter::StoreError),
    /// Credentials could not be read or written.
    #[error("{0}")]
    Credentials(String),
}

impl RegistryError {
    /// Whether trying again may help (a transient network or server failure, or corruption
    /// in transit).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } | RegistryError::DigestMismatch { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }
}

/// The crate's registry result type.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A manifest or index as the registry sent it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The exact bytes (their digest is the manifest's digest).
    pub bytes: Vec<u8>,
    /// The `Content-Type` (or the document's own `mediaType`).
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

/// A stream of blob bytes, from some offset.
pub type BlobStream = Box<dyn Read + Send>;

/// The distribution-API operations kiln needs, against one registry host.
///
/// `repo` is the repository path inside the registry (`library/busybox`). Implementations
/// retry nothing themselves beyond authentication; [`pull()`] and [`push()`] own retries.
pub trait Registry: Send + Sync {
    /// The host (`host[:port]`), for messages.
    fn host(&self) -> &str;
    /// Checks that the registry answers and the credentials (if any) are accepted.
    fn ping(&self) -> Result<()>;
    /// Fetches a manifest or index by tag or digest.
    fn fetch_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest>;
    /// The size of a blob, or `None` when the repository lacks it.
    fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>>;
    /// Streams a blob from `offset`; returns the stream and the offset it really starts at
    /// (0 when the registry ignored the range).
    fn fetch_blob(&self, repo: &str, digest: &Digest, offset: u64) -> Result<(BlobStream, u64)>;
    /// Asks the registry to mount a blob from another repository; `true` when it did.
    fn mount_blob(&self, repo: &str, digest: &Digest, from: &str) -> Result<bool>;
    /// Uploads a blob of `size` bytes read from `data`; `sent` is told of each piece sent.
    fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        data: &mut dyn Read,
        sent: &(dyn Fn(u64) + Sync),
    ) -> Result<()>;
    /// Stores a manifest under a tag or digest; returns the digest the registry reports.
    fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest>;
    /// The repository's tags.
    fn tags(&self, repo: &str) -> Result<Vec<String>>;
    /// Repositories listed by `/v2/_catalog` (up to `limit`).
    fn catalog(&self, limit: usize) -> Result<Vec<String>>;
}

/// Where registries are and how to reach them.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Registries reached over plain HTTP (besides `localhost` and `127.0.0.0/8`, which always
    /// are), as `host[:port]`.
    pub insecure: Vec<String>,
    /// The registry short names (`busybox`, no host) resolve against; `None` means Docker Hub.
    pub default_registry: Option<String>,
    /// The Docker config directory for credentials (`$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config: Option<std::path::PathBuf>,
}

impl RegistryOptions {
    /// Whether `host` is reached over plain HTTP, as Docker decides: loopback names and
    /// addresses, and hosts marked insecure.
    pub fn is_insecure(&self, host: &str) -> bool {
        let name = host_without_port(host);
        name == "localhost"
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
            || name
                .trim_matches(['[', ']'])
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|a| a.is_loopback())
            || self.insecure.iter().any(|i| i == host || i == name)
    }

    /// Qualifies a name the user typed: with no registry host in front, it resolves against
    /// the default registry when one is configured (as `host/name`), else against Docker Hub.
    pub fn qualify(&self, name: &str) -> snapshotter::Result<snapshotter::Reference> {
        match &self.default_registry {
            Some(host) if !has_registry_host(name) => format!("{host}/{name}").parse(),
            _ => name.parse(),
        }
    }
}

/// Whether the first path component of a reference names a registry host (as Docker decides:
/// it has a `.` or `:`, or is `localhost`).
pub fn has_registry_host(name: &str) -> bool {
    match name.split_once('/') {
        Some((first, _)) => first.contains(['.', ':']) || first == "localhost",
        None => false,
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The `docker.io` host the distribution API is really served from.
pub fn api_host(host: &str) -> &str {
    if host == snapshotter::reference::DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// Runs `work` on each blob with up to `workers` threads; the first failure stops the
/// blobs not yet started and is returned. Results come back in `blobs` order.
pub(crate) fn each_blob<T: Send>(
    blobs: &[oci_spec::image::Descriptor],
    workers: usize,
    work: &(dyn Fn(&oci_spec::image::Descriptor) -> Result<T> + Sync),
) -> Result<Vec<T>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RegistryError>> = Mutex::new(None);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..blobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, blobs.len().max(1)) {
            s.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(desc) = blobs.get(i) else { break };
                    match work(desc) {
                        Ok(r) => results.lock().expect("results")[i] = Some(r),
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            first_error.lock().expect("error slot").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().expect("error slot") {
        Some(e) => Err(e),
        None => Ok(results
            .into_inner()
            .expect("results")
            .into_iter()
            .flatten()
            .collect()),
    }
}

/// Progress of blob transfers, for bars or plain lines; `id` is a short digest.
pub trait TransferProgress: Sync {
    /// A transfer of `total` bytes starts (or restarts).
    fn start(&self, id: &str, action: &str, total: u64);
    /// `bytes` more moved.
    fn advance(&self, id: &str, bytes: u64);
    /// The transfer ended; `status` says how ("pull complete", "already exists", ...).
    fn finish(&self, id: &str, status: &str);
    /// A transient failure that will be retried.
    fn retry(&self, id: &str, why: &str);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl TransferProgress for NoProgress {
    fn start(&self, _: &str, _: &str, _: u64) {}
    fn advance(&self, _: &str, _: u64) {}
    fn finish(&self, _: &str, _: &str) {}
    fn retry(&self, _: &str, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_hosts_are_insecure() {
        let o = RegistryOptions {
            insecure: vec!["reg.lan:5000".into(), "other.lan".into()],
            ..Default::default()
        };
        for h in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "reg.lan:5000",
            "other.lan:443",
        ] {
            assert!(o.is_insecure(h), "{h}");
        }
        for h in ["docker.io", "reg.lan:5001", "10.0.0.1:5000", "quay.io"] {
            assert!(!o.is_insecure(h), "{h}");
        }
    }

    #[test]
    fn short_names_use_the_default_registry() {
        let mut o = RegistryOptions::default();
        assert_eq!(
            o.qualify("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
        o.default_registry = Some("127.0.0.1:5000".into());
        assert_eq!(
            o.qualify("busybox").unwrap().to_string(),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(
            o.qualify("team/app:1").unwrap().to_string(),
            "127.0.0.1:5000/team/app:1"
        );
        assert_eq!(
            o.qualify("quay.io/x/y").unwrap().to_string(),
            "quay.io/x/y:latest"
        );
        assert_eq!(
            o.qualify("localhost/y").unwrap().to_string(),
            "localhost/y:latest"
        );
    }
}
