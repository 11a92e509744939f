//! The build cache shared beyond one machine (`--cache-to`, `--cache-from`): each layer
//! step's content-addressed key mapped to its layer, kept as an OCI artifact in a registry
//! (or an OCI layout directory) whose layers are the very blobs of the images, so nothing is
//! stored twice.
//!
//! # Format
//!
//! An OCI image manifest with `artifactType` [`CACHE_ARTIFACT_TYPE`]. Its config blob
//! ([`CACHE_CONFIG_TYPE`]) is JSON, `{"version": 1, "entries": [{"key": "sha256:...",
//! "layer": DESCRIPTOR, "diff_id": "sha256:..."}, ...]}`; its `layers` list every layer an
//! entry names (deduplicated), so the registry keeps them. Keys are the builder's step keys:
//! the same Dockerfile and context give the same keys on any machine.

use std::collections::HashMap;

use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};
use snapshotter::{Digest, Reference, Store};

use crate::cache::CacheEntry;
use crate::registry::{self, Registry, RegistryError, TransferProgress};

/// `artifactType` of a kiln build cache manifest.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.kiln.buildcache.v1";
/// Media type of its config blob.
pub const CACHE_CONFIG_TYPE: &str = "application/vnd.kiln.buildcache.config.v1+json";

/// One layer step of a build, for export.
#[derive(Clone, Debug)]
pub struct CacheRecord {
    /// The stage it belongs to.
    pub stage: usize,
    /// Its key.
    pub key: Digest,
    /// Its layer.
    pub entry: CacheEntry,
}

/// What a build's layer steps were, and which stage was the target (`min` exports only
/// its steps).
#[derive(Debug, Default)]
pub struct CacheLog {
    /// The target stage.
    pub target: Option<usize>,
    /// Every layer step, hit or run.
    pub records: Vec<CacheRecord>,
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    entries: Vec<DocEntry>,
}

#[derive(Serialize, Deserialize)]
struct DocEntry {
    key: String,
    layer: Descriptor,
    diff_id: String,
}

/// What `mode=` exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportMode {
    /// The target stage's steps only.
    Min,
    /// Every stage's steps.
    Max,
}

impl CacheLog {
    /// The records a mode exports, without duplicate keys.
    pub fn select(&self, mode: ExportMode) -> Vec<CacheRecord> {
        let mut seen = std::collections::HashSet::new();
        self.records
            .iter()
            .filter(|r| mode == ExportMode::Max || Some(r.stage) == self.target)
            .filter(|r| seen.insert(r.key.clone()))
            .cloned()
            .collect()
    }
}

/// The cache document as embedded in an image config (`type=inline`).
pub fn inline_document(records: &[CacheRecord]) -> serde_json::Value {
    serde_json::from_slice(&document(records).0).expect("cache document is JSON")
}

/// The config blob and the layers of a cache artifact.
fn document(records: &[CacheRecord]) -> (Vec<u8>, Vec<Descriptor>) {
    let doc = Document {
        version: 1,
        entries: records
            .iter()
            .map(|r| DocEntry {
                key: r.key.to_string(),
                layer: r.entry.layer.clone(),
                diff_id: r.entry.diff_id.clone(),
            })
            .collect(),
    };
    let mut layers: Vec<Descriptor> = Vec::new();
    for r in records {
        if !layers.iter().any(|l| l.digest() == r.entry.layer.digest()) {
            layers.push(r.entry.layer.clone());
        }
    }
    (
        serde_json::to_vec(&doc).expect("cache document serializes"),
        layers,
    )
}

fn manifest(config_digest: &Digest, config_size: u64, layers: &[Descriptor]) -> Vec<u8> {
    let v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry::OCI_MANIFEST,
        "artifactType": CACHE_ARTIFACT_TYPE,
        "config": {"mediaType": CACHE_CONFIG_TYPE, "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    serde_json::to_vec(&v).expect("manifest serializes")
}

/// Pushes the cache of `records` to `dest`; returns the manifest digest.
pub fn export_to_registry(
    reg: &dyn Registry,
    store: &dyn Store,
    dest: &Reference,
    records: &[CacheRecord],
    progress: &dyn TransferProgress,
) -> registry::Result<Digest> {
    let (config, layers) = document(records);
    let (config_digest, config_size) = store.put_bytes(&config)?;
    let config_desc = oci_spec::image::DescriptorBuilder::default()
        .media_type(oci_spec::image::MediaType::Other(CACHE_CONFIG_TYPE.into()))
        .digest(&config_digest)
        .size(config_size)
        .build()
        .expect("descriptor fields are set");
    let mut blobs = vec![config_desc];
    blobs.extend(layers.iter().cloned());
    let options = registry::PushOptions::default();
    registry::send_blobs(reg, store, dest.repository(), &blobs, &options, progress)?;
    let body = manifest(&config_digest, config_size, &layers);
    let tag = dest.tag().unwrap_or("latest");
    options.retry.run(
        |_| reg.put_manifest(dest.repository(), tag, registry::OCI_MANIFEST, &body),
        |e| progress.retry("cache manifest", &e.to_string()),
    )
}

/// Reads the cache at `src`: its entries, keyed by step key.
pub fn import_from_registry(
    reg: &dyn Registry,
    src: &Reference,
) -> registry::Result<HashMap<Digest, CacheEntry>> {
    let wanted = src.digest().map_or_else(
        || src.tag().unwrap_or("latest").to_string(),
        |d| d.to_string(),
    );
    let mut m = reg.fetch_manifest(src.repository(), &wanted)?;
    if m.media_type == registry::OCI_INDEX || m.media_type == registry::DOCKER_MANIFEST_LIST {
        let (child, _) = registry::select_platform(&m.bytes, &crate::Platform::host())
            .map_err(|_| RegistryError::Malformed(format!("{src}: no image for this platform")))?;
        m = reg.fetch_manifest(src.repository(), &child.to_string())?;
    }
    let v: serde_json::Value = serde_json::from_slice(&m.bytes)
        .map_err(|_| RegistryError::Malformed(format!("{src}: malformed cache manifest")))?;
    let not_cache = || RegistryError::UnsupportedManifest {
        what: src.to_string(),
        media_type: v["artifactType"]
            .as_str()
            .unwrap_or(&m.media_type)
            .to_string(),
    };
    let inline = v["artifactType"] != CACHE_ARTIFACT_TYPE;
    if !inline && v["config"]["mediaType"] != CACHE_CONFIG_TYPE {
        return Err(not_cache());
    }
    let config_digest: Digest = v["config"]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(not_cache)?;
    let (mut stream, _) = reg.fetch_blob(src.repository(), &config_digest, 0)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut stream, 64 << 20), &mut bytes)
        .map_err(|e| RegistryError::Unreachable {
            host: reg.host().to_string(),
            reason: e.to_string(),
        })?;
    if Digest::of(&bytes) != config_digest {
        return Err(RegistryError::DigestMismatch {
            what: format!("cache config of {src}"),
            expected: config_digest,
            actual: Digest::of(&bytes),
        });
    }
    if inline {
        // An image: its config may carry the cache (`type=inline`).
        let config: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| not_cache())?;
        let doc = config.get("kiln.buildcache.v1").ok_or_else(not_cache)?;
        return parse_document(&serde_json::to_vec(doc).expect("JSON"), &src.to_string());
    }
    parse_document(&bytes, &src.to_string())
}

fn parse_document(bytes: &[u8], what: &str) -> registry::Result<HashMap<Digest, CacheEntry>> {
    let doc: Document = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Malformed(format!("{what}: malformed cache document: {e}")))?;
    Ok(doc
        .entries
        .into_iter()
        .filter_map(|e| {
            let key = e.key.parse().ok()?;
            Some((
                key,
                CacheEntry {
                    layer: e.layer,
                    diff_id: e.diff_id,
                },
            ))
        })
        .collect())
}

/// Writes the cache of `records` into the OCI layout at `dir` (tagged `cache`).
pub fn export_to_dir(
    store: &dyn Store,
    dir: &std::path::Path,
    records: &[CacheRecord],
) -> snapshotter::Result<()> {
    let out = snapshotter::FsStore::open(dir)?;
    let (config, layers) = document(records);
    for l in &layers {
        let d = Digest::try_from(l.digest())?;
        if !out.contains(&d)? {
            out.put(&mut store.open(&d)?, Some(&d))?;
        }
    }
    let (config_digest, config_size) = out.put_bytes(&config)?;
    let body = manifest(&config_digest, config_size, &layers);
    let (digest, size) = out.put_bytes(&body)?;
    let desc = oci_spec::image::DescriptorBuilder::default()
        .media_type(oci_spec::image::MediaType::ImageManifest)
        .digest(&digest)
        .size(size)
        .build()
        .expect("descriptor fields are set");
    out.tag(&"kiln-cache:latest".parse()?, &desc)
}

/// Reads the cache in the OCI layout at `dir`; its blobs are fetched from there.
pub fn import_from_dir(
    dir: &std::path::Path,
) -> Result<(HashMap<Digest, CacheEntry>, snapshotter::FsStore), String> {
    let src = snapshotter::FsStore::open(dir).map_err(|e| e.to_string())?;
    let desc = src
        .resolve(
            &"kiln-cache:latest"
                .parse()
                .map_err(|e: snapshotter::StoreError| e.to_string())?,
        )
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: no kiln cache there", dir.display()))?;
    let m = src
        .read_verified(&Digest::try_from(desc.digest()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&m).map_err(|e| e.to_string())?;
    let config: Digest = v["config"]["digest"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or("malformed cache manifest")?;
    let bytes = src.read_verified(&config).map_err(|e| e.to_string())?;
    let entries = parse_document(&bytes, &dir.display().to_string()).map_err(|e| e.to_string())?;
    Ok((entries, src))
}

/// Brings one blob of an imported cache into the store.
pub type BlobFetcher = Box<dyn Fn(&Descriptor) -> Result<(), String> + Send + Sync>;

/// Cache entries imported with `--cache-from`, and how to bring a blob of theirs into the
/// store when a step actually needs it.
pub struct RemoteCache {
    entries: HashMap<Digest, CacheEntry>,
    fetch: BlobFetcher,
}

impl RemoteCache {
    /// Entries plus the function that downloads (or copies) a blob into the store.
    pub fn new(entries: HashMap<Digest, CacheEntry>, fetch: BlobFetcher) -> Self {
        RemoteCache { entries, fetch }
    }

    pub(crate) fn get(&self, key: &Digest) -> Option<CacheEntry> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn fetch(&self, d: &Descriptor) -> Result<(), String> {
        (self.fetch)(d)
    }
}
