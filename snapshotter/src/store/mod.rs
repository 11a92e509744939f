//! The content-addressed [`Store`] seam: blobs by digest plus named image references.
//!
//! [`FsStore`] keeps an OCI image layout on disk; [`MemStore`] is the in-memory test double.

mod blob_file;
mod fs;
mod mem;
mod read_ahead;

use std::io::{Read, Write};

use oci_spec::image::Descriptor;

pub use fs::{FsStore, REF_NAME_ANNOTATION};
pub use mem::MemStore;

use crate::digest::Digest;
use crate::error::Result;
use crate::reference::Reference;

/// An open blob being written: bytes go in, and [`BlobWriter::commit`] publishes them
/// under their digest. Dropping it without committing leaves nothing behind.
pub trait BlobWriter: Write + Send {
    /// Publishes the blob atomically, after checking it against `expected` when given.
    fn commit(self: Box<Self>, expected: Option<&Digest>) -> Result<(Digest, u64)>;
}

/// Content-addressed blobs plus a table of image names, as in an OCI image layout.
pub trait Store: Send + Sync {
    /// Whether the blob is present.
    fn contains(&self, digest: &Digest) -> Result<bool>;
    /// Opens a blob for reading.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>>;
    /// The blob as a file, for reading at any offset, where the store keeps blobs in files.
    fn blob_file(&self, _digest: &Digest) -> Option<std::fs::File> {
        None
    }
    /// Starts writing a new blob.
    fn writer(&self) -> Result<Box<dyn BlobWriter>>;
    /// Deletes a blob (nothing happens if it is absent).
    fn remove(&self, digest: &Digest) -> Result<()>;
    /// All named images, sorted by name.
    fn images(&self) -> Result<Vec<(Reference, Descriptor)>>;
    /// Points `name` at `manifest`, replacing what it pointed at before.
    fn tag(&self, name: &Reference, manifest: &Descriptor) -> Result<()>;
    /// Removes a name; returns whether it existed.
    fn untag(&self, name: &Reference) -> Result<bool>;

    /// Streams `data` into a new blob, verifying it against `expected` when given.
    fn put(&self, data: &mut dyn Read, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let mut w = self.writer()?;
        std::io::copy(data, &mut w).map_err(|e| crate::StoreError::Stream("write blob", e))?;
        w.commit(expected)
    }

    /// Stores a small blob held in memory.
    fn put_bytes(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        self.put(&mut &bytes[..], None)
    }

    /// Reads a whole blob and checks its digest.
    fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(digest)?
            .read_to_end(&mut buf)
            .map_err(|e| crate::StoreError::Stream("read blob", e))?;
        let actual = Digest::of(&buf);
        if &actual != digest {
            return Err(crate::StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(buf)
    }

    /// The manifest descriptor a name points at, if any.
    fn resolve(&self, name: &Reference) -> Result<Option<Descriptor>> {
        Ok(self
            .images()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d))
    }
}

/// Shared behaviour tests, run against every [`Store`] implementation.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use oci_spec::image::{DescriptorBuilder, MediaType};

    pub(crate) fn check(store: &dyn Store) {
        let (d, n) = store.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(n, 5);
        assert!(store.contains(&d).unwrap());
        assert_eq!(store.read_verified(&d).unwrap(), b"hello");
        // Putting the same content twice is fine and idempotent.
        assert_eq!(store.put_bytes(b"hello").unwrap().0, d);

        // A wrong expected digest publishes nothing.
        let wrong = Digest::of(b"other");
        let err = store.put(&mut &b"content"[..], Some(&wrong)).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!store.contains(&Digest::of(b"content")).unwrap());

        // An abandoned writer publishes nothing.
        let mut w = store.writer().unwrap();
        w.write_all(b"abandoned").unwrap();
        drop(w);
        assert!(!store.contains(&Digest::of(b"abandoned")).unwrap());

        let desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(&d)
            .size(n)
            .build()
            .unwrap();
        let a: Reference = "a:1".parse().unwrap();
        let b: Reference = "b".parse().unwrap();
        store.tag(&b, &desc).unwrap();
        store.tag(&a, &desc).unwrap();
        store.tag(&a, &desc).unwrap();
        let names: Vec<String> = store
            .images()
            .unwrap()
            .iter()
            .map(|(r, _)| r.to_string())
            .collect();
        assert_eq!(
            names,
            ["docker.io/library/a:1", "docker.io/library/b:latest"]
        );
        assert_eq!(
            store.resolve(&a).unwrap().unwrap().digest().to_string(),
            d.to_string()
        );
        assert!(store.untag(&a).unwrap());
        assert!(!store.untag(&a).unwrap());
        assert!(store.resolve(&a).unwrap().is_none());

        store.remove(&d).unwrap();
        assert!(!store.contains(&d).unwrap());
        assert!(matches!(
            store.open(&d),
            Err(crate::StoreError::BlobNotFound(_))
        ));
    }
}
