//! Layers without a blob yet. A layer of a stage the image does not have (a build stage that
//! a later stage only reads with `COPY --from` or `--mount from=`) is needed as a snapshot
//! and a diffID, never as a blob: such a step only hashes its tar, and skips compressing and
//! storing it, which is most of its layer's time (a 32 MiB layer: about 20 ms instead of
//! 100 ms here). Its descriptor is a placeholder, kept in the build cache like any other:
//! the plain-tar media type, the diffID as digest, and annotations saying what the blob
//! would be made with.
//!
//! When a later build puts such a layer in an image (it targets that stage, served from the
//! cache), the blob is written then, from the snapshot, with the options it would have had,
//! so the image is the one a build from nothing gives; which blob it was is remembered in
//! the cache (`written/`), so that happens once.

use oci_spec::image::{Descriptor, DescriptorBuilder, MediaType};
use snapshotter::Digest;
use snapshotter::diff::{DiffOptions, write_layer_listing_members};
use snapshotter::layer::Layer;

use crate::build::{Builder, StageLayer, StageState};
use crate::cache::CacheEntry;

/// Marks a placeholder descriptor.
const UNWRITTEN: &str = "dev.kiln.layer.unwritten";
/// A layer of copied files (its gzip members end at tar entries).
const COPIED_FILES: &str = "dev.kiln.layer.copied-files";
/// The `SOURCE_DATE_EPOCH` its tar was hashed with.
const CLAMP_MTIME: &str = "dev.kiln.layer.clamp-mtime";

/// The descriptor of a layer whose blob is not written: its tar's diffID and length, and
/// the options that blob is to be written with.
pub(crate) fn placeholder(diff_id: &Digest, tar_len: u64, opts: &DiffOptions) -> Descriptor {
    let mut notes = std::collections::HashMap::from([(UNWRITTEN.to_string(), "true".to_string())]);
    if opts.copied_files.is_some() {
        notes.insert(COPIED_FILES.into(), "true".into());
    }
    if let Some(t) = opts.clamp_mtime {
        notes.insert(CLAMP_MTIME.into(), t.to_string());
    }
    DescriptorBuilder::default()
        .media_type(MediaType::ImageLayer)
        .digest(diff_id)
        .size(tar_len)
        .annotations(notes)
        .build()
        .expect("descriptor fields are set")
}

fn note<'d>(d: &'d Descriptor, key: &str) -> Option<&'d str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

/// Whether `d` is a [`placeholder`].
pub(crate) fn is_placeholder(d: &Descriptor) -> bool {
    note(d, UNWRITTEN) == Some("true")
}

impl Builder<'_> {
    /// A cache entry as an exported cache (`--cache-to`) needs it: with the blob written,
    /// when the entry's layer (the stage's last) was made without one.
    pub(crate) fn exportable(
        &self,
        state: &StageState,
        entry: CacheEntry,
    ) -> Result<CacheEntry, String> {
        if self.cache_log.is_none() || !is_placeholder(&entry.layer) {
            return Ok(entry);
        }
        let last = state
            .layers
            .last()
            .expect("the cached layer is on the stage");
        let layer = self.written_layer(last)?;
        Ok(CacheEntry {
            layer: layer.descriptor,
            ..entry
        })
    }

    /// The layer as the image has it: `l` itself, or for a placeholder the blob written for
    /// it (earlier, or now from its snapshot).
    pub(crate) fn written_layer(&self, l: &StageLayer) -> Result<Layer, String> {
        let d = &l.layer.descriptor;
        if !is_placeholder(d) {
            return Ok(l.layer.clone());
        }
        let diff_id = &l.layer.diff_id;
        let compression = self.compression.to_string();
        if let Some(cache) = self.cache
            && let Some(written) = cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .written_blob(diff_id, &compression)
            && Digest::try_from(written.digest())
                .and_then(|b| self.store.contains(&b))
                .unwrap_or(false)
        {
            return Ok(Layer {
                descriptor: written,
                diff_id: diff_id.clone(),
            });
        }
        if !l.dir.is_dir() {
            return Err(format!(
                "layer {} has neither a blob nor a snapshot: build again with --no-cache",
                diff_id.short()
            ));
        }
        let opts = DiffOptions {
            compression: self.compression,
            copied_files: (note(d, COPIED_FILES) == Some("true")).then_some(None),
            clamp_mtime: note(d, CLAMP_MTIME).and_then(|t| t.parse().ok()),
            ..DiffOptions::from_env()
        };
        let (layer, members) =
            write_layer_listing_members(self.store, &l.dir, &opts).map_err(|e| e.to_string())?;
        if &layer.diff_id != diff_id {
            return Err(format!(
                "the snapshot of layer {} changed since it was made (its tar is now {}): build again with --no-cache",
                diff_id.short(),
                layer.diff_id.short()
            ));
        }
        if let Some(cache) = self.cache {
            let c = cache.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(list), Ok(blob)) = (members, Digest::try_from(layer.descriptor.digest())) {
                let _ = c.save_members(&blob, &list);
            }
            let _ = c.save_written_blob(diff_id, &compression, &layer.descriptor);
        }
        Ok(layer)
    }
}
