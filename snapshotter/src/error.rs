//! The crate's error type.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong in the store, layers and snapshots.
///
/// Messages are lower-case and carry their context; the cause (if any) is the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation on a path failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done ("create", "rename", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a stream of content failed.
    #[error("{0}")]
    Stream(&'static str, #[source] io::Error),
    /// A string is not a valid `sha256:` digest.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// A string is not a valid image reference.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The text given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Content did not hash to the digest it was announced with.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content should have had.
        expected: Digest,
        /// The digest it had.
        actual: Digest,
    },
    /// A blob is not in the store.
    #[error("blob {0} not found in the store")]
    BlobNotFound(Digest),
    /// No image has this name.
    #[error("no such image: {0}")]
    ImageNotFound(String),
    /// A layer archive is not a valid tar stream.
    #[error("{0}")]
    InvalidLayer(String),
    /// A JSON document in the store is malformed.
    #[error("malformed {what}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds path context to I/O results.
pub(crate) trait IoContext<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            op,
            path: path.into(),
            source,
        })
    }
}
