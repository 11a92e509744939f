//! [`FsStore`]: the store as an OCI image layout directory that skopeo and umoci read directly.
//!
//! ```text
//! ROOT/oci-layout          {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json          one manifest entry per name (org.opencontainers.image.ref.name)
//! ROOT/blobs/sha256/HEX    content, published by rename once complete and verified
//! ROOT/ingest/             blobs being written (same filesystem, so the rename is atomic)
//! ROOT/index.lock          serializes index.json updates between kiln processes
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};

use super::blob_file::{BlobFile, FinishedBlob};
use super::{BlobWriter, Store};
use crate::digest::Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::reference::Reference;

/// The annotation that names an image in an OCI layout's index.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A [`Store`] in an OCI image layout directory.
#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens the layout at `root`, creating an empty one if the directory has none.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let store = FsStore { root };
        for dir in [store.root.join("blobs/sha256"), store.ingest_dir()] {
            fs::create_dir_all(&dir).at("create directory", &dir)?;
        }
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            write_atomically(&layout, OCI_LAYOUT.as_bytes(), &store.ingest_dir())?;
        }
        let index = store.index_path();
        if !index.exists() {
            let _lock = store.lock_index()?;
            if !index.exists() {
                store.write_index(&empty_index())?;
            }
        }
        Ok(store)
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn lock_index(&self) -> Result<File> {
        let path = self.root.join("index.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at("open", &path)?;
        f.lock().at("lock", &path)?;
        Ok(f)
    }

    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).at("read", &path)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: path.display().to_string(),
            source,
        })
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let bytes = serde_json::to_vec(index).map_err(|source| StoreError::Json {
            what: "index.json".into(),
            source,
        })?;
        write_atomically(&self.index_path(), &bytes, &self.ingest_dir())
    }

    /// Applies `change` to index.json under the index lock.
    fn update_index<T>(&self, change: impl FnOnce(&mut Vec<Descriptor>) -> T) -> Result<T> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut manifests = index.manifests().clone();
        let out = change(&mut manifests);
        index.set_manifests(manifests);
        self.write_index(&index)?;
        Ok(out)
    }
}

fn empty_index() -> ImageIndex {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(Vec::new())
        .build()
        .expect("empty index is valid")
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()?
        .get(REF_NAME_ANNOTATION)
        .map(String::as_str)
}

/// Writes `bytes` to `path` so that readers see either the old or the new file, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], tmp_dir: &Path) -> Result<()> {
    let mut tmp =
        tempfile::NamedTempFile::new_in(tmp_dir).at("create temporary file in", tmp_dir)?;
    tmp.write_all(bytes).at("write", tmp.path())?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .at("chmod", tmp.path())?;
    tmp.as_file().sync_all().at("sync", tmp.path())?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .at("rename into place", path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("sync directory", dir)
}

struct FsBlobWriter {
    blobs: PathBuf,
    tmp_path: PathBuf,
    out: BlobFile,
}

impl Write for FsBlobWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.out.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter for FsBlobWriter {
    fn commit(self: Box<Self>, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let tmp_path = self.tmp_path;
        let FinishedBlob {
            digest: actual,
            size,
            file: tmp,
            direct_chunks,
        } = self.out.finish().at("write", &tmp_path)?;
        tracing::trace!(%actual, size, direct_chunks, "blob written");
        if let Some(e) = expected
            && e != &actual
        {
            return Err(StoreError::DigestMismatch {
                expected: e.clone(),
                actual,
            });
        }
        let dest = self.blobs.join(actual.hex());
        if dest.exists() {
            // Same digest, same content: the copy already there is as good as ours.
            return Ok((actual, size));
        }
        // Readable by everyone, as in other OCI layouts (temporary files start as 0600).
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .at("chmod", &tmp_path)?;
        tmp.as_file().sync_all().at("sync", &tmp_path)?;
        tmp.persist(&dest)
            .map_err(|e| e.error)
            .at("rename into place", &dest)?;
        sync_parent(&dest)?;
        Ok((actual, size))
    }
}

impl Store for FsStore {
    fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_path(digest).exists())
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().at("stat", &path)?.len();
                Ok(super::read_ahead::reader(f, len))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(digest.clone()))
            }
            Err(e) => Err(e).at("open", path),
        }
    }

    fn blob_file(&self, digest: &Digest) -> Option<File> {
        File::open(self.blob_path(digest)).ok()
    }

    fn writer(&self) -> Result<Box<dyn BlobWriter>> {
        let dir = self.ingest_dir();
        let tmp = tempfile::NamedTempFile::new_in(&dir).at("create temporary file in", &dir)?;
        Ok(Box::new(FsBlobWriter {
            blobs: self.root.join("blobs/sha256"),
            tmp_path: tmp.path().to_path_buf(),
            out: BlobFile::new(tmp),
        }))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at("remove", path),
            _ => Ok(()),
        }
    }

    fn images(&self) -> Result<Vec<(Reference, Descriptor)>> {
        let index = self.read_index()?;
        let mut out: HashMap<String, (Reference, Descriptor)> = HashMap::new();
        for d in index.manifests() {
            // Names kiln did not write (e.g. a bare "latest" from umoci) are skipped, not fatal.
            if let Some(r) = ref_name(d).and_then(|n| n.parse::<Reference>().ok()) {
                out.insert(r.to_string(), (r, d.clone()));
            }
        }
        let mut v: Vec<_> = out.into_values().collect();
        v.sort_by_key(|(r, _)| r.to_string());
        Ok(v)
    }

    fn tag(&self, name: &Reference, manifest: &Descriptor) -> Result<()> {
        let name_s = name.to_string();
        let mut entry = manifest.clone();
        let mut ann = entry.annotations().clone().unwrap_or_default();
        ann.insert(REF_NAME_ANNOTATION.to_string(), name_s.clone());
        entry.set_annotations(Some(ann));
        self.update_index(|m| {
            m.retain(|d| ref_name(d) != Some(name_s.as_str()));
            m.push(entry);
        })
    }

    fn untag(&self, name: &Reference) -> Result<bool> {
        let name_s = name.to_string();
        self.update_index(|m| {
            let before = m.len();
            m.retain(|d| ref_name(d) != Some(name_s.as_str()));
            m.len() != before
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_store_meets_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        super::super::contract::check(&store);
        // Nothing is left in the ingest directory.
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn layout_files_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        FsStore::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            OCI_LAYOUT
        );
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], serde_json::json!([]));
    }

    #[test]
    fn concurrent_taggers_lose_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let (d, n) = store.put_bytes(b"{}").unwrap();
        let desc = oci_spec::image::DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(&d)
            .size(n)
            .build()
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (store, desc) = (store.clone(), desc.clone());
                s.spawn(move || {
                    for i in 0..10 {
                        let r: Reference = format!("img{t}:{i}").parse().unwrap();
                        store.tag(&r, &desc).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.images().unwrap().len(), 80);
    }
}
