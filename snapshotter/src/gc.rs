//! What the store's names keep alive, and removing the rest (`kiln rmi`, `kiln system prune`).
//!
//! Builds, imports and loads hold [`GcLock::shared`] while they write, so a collection (which
//! takes it exclusively) never deletes a blob that a process has written but not yet named.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::path::Path;

use oci_spec::image::{ImageIndex, MediaType};

use crate::digest::Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::snapshot::chain_id;
use crate::store::{FsStore, Store};

/// The store-wide lock that separates writers (shared) from collection (exclusive).
pub struct GcLock {
    _file: File,
}

impl GcLock {
    fn open(root: &Path) -> Result<File> {
        let p = root.join("gc.lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at("open", &p)
    }

    /// Held by anything that writes blobs or snapshots it has not named yet.
    pub fn shared(root: &Path) -> Result<GcLock> {
        let f = Self::open(root)?;
        f.lock_shared().at("lock", root.join("gc.lock"))?;
        Ok(GcLock { _file: f })
    }

    /// Held while collecting.
    pub fn exclusive(root: &Path) -> Result<GcLock> {
        let f = Self::open(root)?;
        f.lock().at("lock", root.join("gc.lock"))?;
        Ok(GcLock { _file: f })
    }
}

/// Blobs and snapshot chain IDs reachable from the named images.
#[derive(Debug, Default)]
pub struct Reachable {
    /// Blob digests.
    pub blobs: BTreeSet<Digest>,
    /// Snapshot chain IDs.
    pub chains: BTreeSet<Digest>,
}

/// Walks every named image (manifests, indexes, configs, layers), plus the image manifests
/// in `also` (images containers use).
pub fn reachable(store: &dyn Store, also: &[Digest]) -> Result<Reachable> {
    let mut r = Reachable::default();
    let mut todo: Vec<(Digest, MediaType)> = also
        .iter()
        .map(|d| (d.clone(), MediaType::ImageManifest))
        .collect();
    for (_, d) in store.images()? {
        todo.push((Digest::try_from(d.digest())?, d.media_type().clone()));
    }
    while let Some((d, mt)) = todo.pop() {
        if !r.blobs.insert(d.clone()) || !store.contains(&d)? {
            continue;
        }
        let bytes = store.read_verified(&d)?;
        let is_index =
            matches!(mt, MediaType::ImageIndex) || mt.to_string().contains("manifest.list");
        if is_index {
            let idx: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                    what: format!("index {d}"),
                    source,
                })?;
            for m in idx.manifests() {
                todo.push((Digest::try_from(m.digest())?, m.media_type().clone()));
            }
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                what: format!("manifest {d}"),
                source,
            })?;
        let cfg = v["config"]["digest"]
            .as_str()
            .and_then(|s| s.parse::<Digest>().ok());
        if let Some(c) = &cfg {
            r.blobs.insert(c.clone());
        }
        for l in v["layers"].as_array().into_iter().flatten() {
            if let Some(ld) = l["digest"].as_str().and_then(|s| s.parse::<Digest>().ok()) {
                r.blobs.insert(ld);
            }
        }
        if let Some(c) = cfg.filter(|c| store.contains(c).unwrap_or(false)) {
            let cv: serde_json::Value =
                serde_json::from_slice(&store.read_verified(&c)?).map_err(|source| {
                    StoreError::Json {
                        what: format!("config {c}"),
                        source,
                    }
                })?;
            let mut parent: Option<Digest> = None;
            for id in cv["rootfs"]["diff_ids"].as_array().into_iter().flatten() {
                if let Some(diff) = id.as_str().and_then(|s| s.parse::<Digest>().ok()) {
                    let chain = chain_id(parent.as_ref(), &diff);
                    r.chains.insert(chain.clone());
                    parent = Some(chain);
                }
            }
        }
    }
    Ok(r)
}

/// What a collection removed (or would remove).
#[derive(Debug, Default)]
pub struct Collected {
    /// Blobs removed.
    pub blobs: Vec<Digest>,
    /// Snapshot directories removed.
    pub snapshots: Vec<String>,
    /// Bytes freed (blob sizes plus snapshot file sizes).
    pub bytes: u64,
}

/// Removes every blob and snapshot that neither a named image nor an image manifest in
/// `also` reaches. Call with [`GcLock::exclusive`].
pub fn collect(store: &FsStore, also: &[Digest], dry_run: bool) -> Result<Collected> {
    let keep = reachable(store, also)?;
    let mut out = Collected::default();
    let blobs = store.root().join("blobs/sha256");
    for e in fs::read_dir(&blobs).at("read directory", &blobs)? {
        let e = e.at("read directory", &blobs)?;
        let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else {
            continue;
        };
        if keep.blobs.contains(&d) {
            continue;
        }
        out.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        if !dry_run {
            store.remove(&d)?;
            let _ = fs::remove_file(crate::members::list_path(store.root(), &d));
        }
        out.blobs.push(d);
    }
    // Under the exclusive lock no writer runs: temporary files are a dead process's leftovers.
    for dir in ["ingest", "snapshots/tmp", "sandbox"] {
        for e in fs::read_dir(store.root().join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.bytes += dir_size(&e.path());
            if !dry_run {
                remove_tree(&e.path())?;
            }
        }
    }
    let snaps = store.root().join("snapshots");
    if snaps.is_dir() {
        for e in fs::read_dir(&snaps).at("read directory", &snaps)? {
            let e = e.at("read directory", &snaps)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "tmp" {
                continue;
            }
            let Ok(chain) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            if keep.chains.contains(&chain) {
                continue;
            }
            out.bytes += dir_size(&e.path());
            if !dry_run {
                remove_tree(&e.path())?;
            }
            out.snapshots.push(name);
        }
    }
    Ok(out)
}

/// Total size of the files under a directory.
pub fn dir_size(p: &Path) -> u64 {
    let Ok(md) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !md.is_dir() {
        return md.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Removes a file, or a directory tree (first making read-only directories writable).
pub fn remove_tree(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(p: &Path) {
        if let Ok(md) = fs::symlink_metadata(p)
            && md.is_dir()
        {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                open_up(&e.path());
            }
        }
    }
    if fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) {
        return fs::remove_file(p).at("remove", p);
    }
    if fs::remove_dir_all(p).is_err() {
        open_up(p);
        fs::remove_dir_all(p).at("remove", p)?;
    }
    Ok(())
}
