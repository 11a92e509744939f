//! Image archives: `docker-archive` (what `docker save` writes and `docker load` reads) and
//! `oci-archive` (an OCI image layout in a tar), written from and loaded into the store.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};

use crate::digest::Digest;
use crate::error::{IoContext, Result, StoreError};
use crate::image::{StoredImage, read_image, write_image_raw};
use crate::layer::{decompressed, import_tar};
use crate::reference::Reference;
use crate::store::{FsStore, REF_NAME_ANNOTATION, Store};

/// Which archive format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `manifest.json`, `<config>.json`, `<layer>/layer.tar` (uncompressed layers).
    DockerArchive,
    /// An OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/...`.
    OciArchive,
}

fn stream_err(what: &'static str) -> impl Fn(io::Error) -> StoreError {
    move |e| StoreError::Stream(what, e)
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
        .map_err(stream_err("write archive"))
}

/// Writes `images` (name and stored image) as an archive.
pub fn save(
    store: &dyn Store,
    images: &[(Reference, StoredImage)],
    format: ArchiveFormat,
    out: impl Write,
) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    match format {
        ArchiveFormat::OciArchive => {
            let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
            append(&mut tar, "oci-layout", layout.len() as u64, &layout[..])?;
            let mut written = std::collections::BTreeSet::new();
            let mut entries = Vec::new();
            for (name, img) in images {
                let mut blobs = vec![(
                    Digest::try_from(img.descriptor.digest())?,
                    img.descriptor.size(),
                )];
                blobs.push((
                    Digest::try_from(img.manifest.config().digest())?,
                    img.manifest.config().size(),
                ));
                for l in img.manifest.layers() {
                    blobs.push((Digest::try_from(l.digest())?, l.size()));
                }
                for (d, size) in blobs {
                    if written.insert(d.clone()) {
                        append(
                            &mut tar,
                            &format!("blobs/sha256/{}", d.hex()),
                            size,
                            store.open(&d)?,
                        )?;
                    }
                }
                let mut entry = img.descriptor.clone();
                let mut ann = entry.annotations().clone().unwrap_or_default();
                ann.insert(REF_NAME_ANNOTATION.to_string(), name.to_string());
                // containerd and podman read the full name from this one.
                ann.insert("io.containerd.image.name".to_string(), name.to_string());
                entry.set_annotations(Some(ann));
                entries.push(entry);
            }
            let index: ImageIndex = ImageIndexBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::ImageIndex)
                .manifests(entries)
                .build()
                .expect("index fields are set");
            let bytes = serde_json::to_vec(&index).expect("index serializes");
            append(&mut tar, "index.json", bytes.len() as u64, &bytes[..])?;
        }
        ArchiveFormat::DockerArchive => {
            let mut manifest = Vec::new();
            let mut written = std::collections::BTreeSet::new();
            for (name, img) in images {
                let config = Digest::try_from(img.manifest.config().digest())?;
                let config_path = format!("{}.json", config.hex());
                if written.insert(config_path.clone()) {
                    append(
                        &mut tar,
                        &config_path,
                        img.manifest.config().size(),
                        store.open(&config)?,
                    )?;
                }
                let mut layers = Vec::new();
                for (l, diff_id) in img
                    .manifest
                    .layers()
                    .iter()
                    .zip(&img.config.rootfs.diff_ids)
                {
                    let diff: Digest = diff_id.parse()?;
                    let path = format!("{}/layer.tar", diff.hex());
                    if written.insert(path.clone()) {
                        // docker-archive layers are the uncompressed tars; their size is only
                        // known after decompressing, so spool to a temporary file first.
                        let mut tmp =
                            tempfile::tempfile().map_err(stream_err("create temporary file"))?;
                        let blob = store.open(&Digest::try_from(l.digest())?)?;
                        let n = io::copy(&mut decompressed(blob)?, &mut tmp)
                            .map_err(stream_err("decompress layer"))?;
                        io::Seek::rewind(&mut tmp).map_err(stream_err("rewind"))?;
                        append(&mut tar, &path, n, tmp)?;
                    }
                    layers.push(path);
                }
                manifest.push(serde_json::json!({
                    "Config": config_path,
                    "RepoTags": [format!("{}:{}", name.familiar_name(), name.tag().unwrap_or("latest"))],
                    "Layers": layers,
                }));
            }
            let bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
            append(&mut tar, "manifest.json", bytes.len() as u64, &bytes[..])?;
        }
    }
    tar.into_inner()
        .map_err(stream_err("finish archive"))?
        .flush()
        .map_err(stream_err("flush archive"))?;
    Ok(())
}

/// Loads a docker-archive or oci-archive (plain, gzip or zstd) into the store; returns the
/// names loaded. Every blob is verified on the way in, and names are set only at the end.
pub fn load(store: &FsStore, input: impl Read + Send) -> Result<Vec<Reference>> {
    let work = tempfile::Builder::new()
        .prefix("load-")
        .tempdir_in(store.root().join("ingest"))
        .at("create directory in", store.root().join("ingest"))?;
    let mut archive = tar::Archive::new(decompressed(input)?);
    for entry in archive
        .entries()
        .map_err(|e| StoreError::InvalidLayer(format!("not a valid archive: {e}")))?
    {
        let mut entry =
            entry.map_err(|e| StoreError::InvalidLayer(format!("not a valid archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| StoreError::InvalidLayer(format!("bad path in archive: {e}")))?
            .into_owned();
        if path.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(StoreError::InvalidLayer(format!(
                "archive entry {} escapes the archive",
                path.display()
            )));
        }
        if !entry
            .unpack_in(work.path())
            .map_err(|e| StoreError::InvalidLayer(format!("unpack {}: {e}", path.display())))?
        {
            return Err(StoreError::InvalidLayer(format!(
                "archive entry {} was refused",
                path.display()
            )));
        }
    }
    let dir = work.path();
    let mut pending: Vec<(Reference, Descriptor)> = Vec::new();
    if dir.join("manifest.json").is_file() {
        let m: Vec<serde_json::Value> = read_json(&dir.join("manifest.json"))?;
        for entry in m {
            let cfg_path = entry["Config"].as_str().ok_or_else(|| {
                StoreError::InvalidLayer("manifest.json: entry without Config".into())
            })?;
            let cfg_bytes = fs::read(dir.join(cfg_path)).at("read", dir.join(cfg_path))?;
            let config: crate::config::ImageConfig =
                serde_json::from_slice(&cfg_bytes).map_err(|source| StoreError::Json {
                    what: cfg_path.into(),
                    source,
                })?;
            let layers_in = entry["Layers"].as_array().cloned().unwrap_or_default();
            if layers_in.len() != config.rootfs.diff_ids.len() {
                return Err(StoreError::InvalidLayer(format!(
                    "{cfg_path}: {} layers but {} diff_ids",
                    layers_in.len(),
                    config.rootfs.diff_ids.len()
                )));
            }
            let mut layers = Vec::new();
            for (l, want) in layers_in.iter().zip(&config.rootfs.diff_ids) {
                let lp = l.as_str().unwrap_or_default();
                let f = File::open(dir.join(lp)).at("open", dir.join(lp))?;
                let layer = import_tar(store, f)?;
                if layer.diff_id.to_string() != *want {
                    return Err(StoreError::DigestMismatch {
                        expected: want.parse()?,
                        actual: layer.diff_id,
                    });
                }
                layers.push(layer);
            }
            // The config is stored byte for byte, so the image ID stays the same.
            let stored = write_image_raw(store, &cfg_bytes, &layers)?;
            for t in entry["RepoTags"].as_array().into_iter().flatten() {
                if let Some(r) = t.as_str().and_then(|t| t.parse::<Reference>().ok()) {
                    pending.push((r, stored.descriptor.clone()));
                }
            }
        }
    } else if dir.join("index.json").is_file() {
        let index: ImageIndex = read_json(&dir.join("index.json"))?;
        for m in index.manifests() {
            let ann = m.annotations().clone().unwrap_or_default();
            let name = ann
                .get("io.containerd.image.name")
                .or_else(|| ann.get(REF_NAME_ANNOTATION))
                .cloned();
            let Some(name) = name.and_then(|n| n.parse::<Reference>().ok()) else {
                return Err(StoreError::InvalidLayer("oci-archive entry has no image name (org.opencontainers.image.ref.name must be a full reference)".into()));
            };
            copy_blob_tree(store, dir, m)?;
            pending.push((name, m.clone()));
        }
    } else {
        return Err(StoreError::InvalidLayer(
            "not an image archive: no manifest.json or index.json".into(),
        ));
    }
    for (r, d) in &pending {
        store.tag(r, d)?;
    }
    Ok(pending.into_iter().map(|(r, _)| r).collect())
}

/// Stores a manifest and everything it references from an unpacked OCI layout, verifying
/// each digest.
fn copy_blob_tree(store: &dyn Store, dir: &Path, m: &Descriptor) -> Result<()> {
    let put = |d: &Digest| -> Result<()> {
        if store.contains(d)? {
            return Ok(());
        }
        let p = dir.join("blobs/sha256").join(d.hex());
        let mut f = File::open(&p).at("open", &p)?;
        store.put(&mut f, Some(d)).map(|_| ())
    };
    let md = Digest::try_from(m.digest())?;
    put(&md)?;
    let v: serde_json::Value =
        serde_json::from_slice(&store.read_verified(&md)?).map_err(|source| StoreError::Json {
            what: format!("manifest {md}"),
            source,
        })?;
    if v["manifests"].is_array() {
        return Err(StoreError::InvalidLayer(
            "multi-platform image indexes in archives are not supported yet".into(),
        ));
    }
    let mut refs: Vec<Digest> = Vec::new();
    if let Some(c) = v["config"]["digest"].as_str() {
        refs.push(c.parse()?);
    }
    for l in v["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            refs.push(d.parse()?);
        }
    }
    for d in refs {
        put(&d)?;
    }
    read_image(store, m).map(|_| ())
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let bytes = fs::read(p).at("read", p)?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
        what: p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source,
    })
}
