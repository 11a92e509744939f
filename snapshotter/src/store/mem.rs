//! [`MemStore`]: an in-memory [`Store`] for tests.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::sync::{Arc, Mutex};

use oci_spec::image::Descriptor;

use super::{BlobWriter, Store};
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::reference::Reference;

/// A [`Store`] that keeps everything in memory; cloning shares the contents.
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    blobs: BTreeMap<Digest, Arc<Vec<u8>>>,
    names: BTreeMap<String, (Reference, Descriptor)>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct MemWriter {
    store: MemStore,
    buf: Vec<u8>,
}

impl Write for MemWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for MemWriter {
    fn commit(self: Box<Self>, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let actual = Digest::of(&self.buf);
        if let Some(e) = expected
            && e != &actual
        {
            return Err(StoreError::DigestMismatch {
                expected: e.clone(),
                actual,
            });
        }
        let n = self.buf.len() as u64;
        self.store
            .lock()
            .blobs
            .insert(actual.clone(), Arc::new(self.buf));
        Ok((actual, n))
    }
}

impl Store for MemStore {
    fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.lock().blobs.contains_key(digest))
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let blob = self.lock().blobs.get(digest).cloned();
        let blob = blob.ok_or_else(|| StoreError::BlobNotFound(digest.clone()))?;
        Ok(Box::new(Cursor::new(blob.as_ref().clone())))
    }

    fn writer(&self) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(MemWriter {
            store: self.clone(),
            buf: Vec::new(),
        }))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.lock().blobs.remove(digest);
        Ok(())
    }

    fn images(&self) -> Result<Vec<(Reference, Descriptor)>> {
        Ok(self.lock().names.values().cloned().collect())
    }

    fn tag(&self, name: &Reference, manifest: &Descriptor) -> Result<()> {
        self.lock()
            .names
            .insert(name.to_string(), (name.clone(), manifest.clone()));
        Ok(())
    }

    fn untag(&self, name: &Reference) -> Result<bool> {
        Ok(self.lock().names.remove(&name.to_string()).is_some())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_store_meets_the_store_contract() {
        super::super::contract::check(&super::MemStore::new());
    }
}
