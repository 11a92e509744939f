//! The build cache around the layer-making steps: a step's key looked up in the local cache
//! and an imported one, the previous build's layer offered to a re-run COPY, and a finished
//! step's snapshot committed as the stage's next layer and recorded.

use std::path::PathBuf;
use std::sync::Arc;

use snapshotter::Digest;
use snapshotter::diff::{DiffOptions, layer_diff_id, write_layer_listing_members};
use snapshotter::layer::Layer;
use snapshotter::members::MemberSource;
use snapshotter::snapshot::{Active, chain_id};

use crate::build::{BuildEvent, Builder, StageLayer, StageState, push_history};
use crate::cache::{CacheEntry, StepInputs, explain_miss};
use crate::unwritten::{is_placeholder, placeholder};

impl Builder<'_> {
    /// Reuses the layer the cache has for `inputs`, or makes it with `make` and records it.
    pub(crate) fn with_cache(
        &self,
        state: &mut StageState,
        slot: &Digest,
        mut inputs: StepInputs,
        make: impl FnOnce(&Self, &mut StageState, Option<&PreviousLayer>) -> Result<Active, String>,
    ) -> Result<(), String> {
        // A layer made with clamped mtimes is another layer.
        inputs.source_date_epoch = self.source_date_epoch;
        let key = inputs.key();
        let mut prev = None;
        if let Some(cache) = self.cache {
            let c = cache.lock().unwrap_or_else(|p| p.into_inner());
            prev = c.last_inputs(slot);
            if !state.no_cache
                && let Some(entry) = c.get(&key)
                && self.use_cached(state, &entry).is_ok()
            {
                let _ = c.save_inputs(slot, &inputs);
                drop(c);
                let entry = self.exportable(state, entry)?;
                self.served(state, &key, entry);
                return Ok(());
            }
        }
        // An imported cache (--cache-from): its layer is fetched only when a step needs it.
        if !state.no_cache
            && let Some(rc) = self.remote_cache
            && let Some(entry) = rc.get(&key)
            && let Ok(diff_id) = entry.diff_id.parse::<Digest>()
        {
            let chain = chain_id(state.layers.last().map(|l| &l.chain), &diff_id);
            let dir = self.snapshots.layer_dir(&chain);
            let pending = !dir.exists();
            let layer = Layer {
                descriptor: entry.layer.clone(),
                diff_id,
            };
            push_layer(state, layer, chain, dir, pending);
            if let Some(cache) = self.cache {
                let _ = cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .save_inputs(slot, &inputs);
            }
            self.served(state, &key, entry);
            return Ok(());
        }
        if self.cache.is_some() {
            if state.no_cache {
                (self.progress)(BuildEvent::CacheSkipped { number: state.step });
            } else if prev.is_some() {
                let why = explain_miss(prev.as_ref(), &inputs);
                (self.progress)(BuildEvent::CacheMiss {
                    number: state.step,
                    reason: &why,
                });
            }
        }
        // The step runs on the stage's filesystem: every layer must be there now.
        self.materialize(state)?;
        let previous = prev
            .as_ref()
            .filter(|_| !state.no_cache)
            .and_then(|p| self.previous_layer(state, p, &inputs));
        let active = make(self, state, previous.as_ref())?;
        // A layer of context files: its gzip members are listed, and the previous build's
        // members of the files that did not change are taken instead of compressed again.
        let copied_files = (!inputs.files.is_empty())
            .then(|| previous.as_ref().and_then(|p| self.earlier_members(p)));
        self.commit(state, active, copied_files)?;
        let last = state.layers.last().expect("commit pushed a layer");
        let entry = CacheEntry {
            layer: last.layer.descriptor.clone(),
            diff_id: last.layer.diff_id.to_string(),
        };
        if let Some(cache) = self.cache {
            let c = cache.lock().unwrap_or_else(|p| p.into_inner());
            c.put(&key, &entry)
                .map_err(|e| format!("write the build cache: {e}"))?;
            let _ = c.save_inputs(slot, &inputs);
        }
        self.record(state, &key, entry);
        Ok(())
    }

    /// The layer the previous build made for this step, when only some of its COPY sources
    /// changed since: the files that did not change can be linked from it, not copied again.
    fn previous_layer(
        &self,
        state: &StageState,
        prev: &StepInputs,
        now: &StepInputs,
    ) -> Option<PreviousLayer> {
        if prev.files.is_empty() || prev.parent != now.parent || prev.instruction != now.instruction
        {
            return None;
        }
        let entry = self
            .cache?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&prev.key())?;
        let diff_id: Digest = entry.diff_id.parse().ok()?;
        let upper = self
            .snapshots
            .layer_dir(&chain_id(state.layers.last().map(|l| &l.chain), &diff_id));
        let unchanged = now
            .files
            .iter()
            .filter(|(path, id)| prev.files.get(*path) == Some(id))
            .map(|(path, _)| path.clone())
            .collect();
        let blob = Digest::try_from(entry.layer.digest()).ok()?;
        upper.is_dir().then_some(PreviousLayer {
            upper,
            unchanged,
            blob,
        })
    }

    /// A step served from a cache: reported, and recorded for `--cache-to`.
    fn served(&self, state: &mut StageState, key: &Digest, entry: CacheEntry) {
        state.from_cache = true;
        (self.progress)(BuildEvent::Cached { number: state.step });
        self.record(state, key, entry);
    }

    fn record(&self, state: &StageState, key: &Digest, entry: CacheEntry) {
        if let Some(log) = self.cache_log {
            log.lock().unwrap_or_else(|p| p.into_inner()).records.push(
                crate::remote_cache::CacheRecord {
                    stage: state.index,
                    key: key.clone(),
                    entry,
                },
            );
        }
    }

    /// Fetches and unpacks the layers an imported cache served but no step needed yet.
    pub(crate) fn materialize(&self, state: &mut StageState) -> Result<(), String> {
        for l in state.layers.iter_mut().filter(|l| l.pending) {
            self.ensure_present(l)?;
            l.pending = false;
        }
        Ok(())
    }

    /// Makes one layer's blob and snapshot present.
    pub(crate) fn ensure_present(&self, l: &StageLayer) -> Result<(), String> {
        self.ensure_blob(&l.layer.descriptor)?;
        self.snapshots
            .ensure_layer(self.store, &l.chain, &l.layer.descriptor, &l.layer.diff_id)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Makes a layer's blob present in the store (from the imported cache when missing).
    pub(crate) fn ensure_blob(&self, d: &oci_spec::image::Descriptor) -> Result<(), String> {
        let digest = Digest::try_from(d.digest()).map_err(|e| e.to_string())?;
        if self.store.contains(&digest).map_err(|e| e.to_string())? {
            return Ok(());
        }
        match self.remote_cache {
            Some(rc) => rc
                .fetch(d)
                .map_err(|e| format!("fetch cached layer {}: {e}", digest.short())),
            None => Err(format!("layer {} is not in the store", digest.short())),
        }
    }

    /// Puts a cached layer on the stage (its blob must still be in the store).
    fn use_cached(&self, state: &mut StageState, entry: &CacheEntry) -> Result<(), String> {
        let diff_id: Digest = entry.diff_id.parse().map_err(|e| format!("{e}"))?;
        let chain = chain_id(state.layers.last().map(|l| &l.chain), &diff_id);
        let dir = self
            .snapshots
            .ensure_layer(self.store, &chain, &entry.layer, &diff_id)
            .map_err(|e| e.to_string())?;
        let layer = Layer {
            descriptor: entry.layer.clone(),
            diff_id,
        };
        push_layer(state, layer, chain, dir, false);
        Ok(())
    }

    /// The gzip members of the previous build's layer, to take the unchanged ones from.
    fn earlier_members(&self, previous: &PreviousLayer) -> Option<Arc<MemberSource>> {
        let list = self
            .cache?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members(&previous.blob)?;
        let blob = self.store.blob_file(&previous.blob)?;
        Some(Arc::new(MemberSource::new(blob, &list)))
    }

    /// Turns an active snapshot into the stage's next layer; `copied_files` for a layer of
    /// context files (with the previous build's members, when there are any).
    fn commit(
        &self,
        state: &mut StageState,
        active: Active,
        copied_files: Option<Option<Arc<MemberSource>>>,
    ) -> Result<(), String> {
        let opts = DiffOptions {
            compression: self.compression,
            copied_files,
            clamp_mtime: self.source_date_epoch,
            ..DiffOptions::from_env()
        };
        let started = std::time::Instant::now();
        // A stage the image does not have needs its layers' snapshots, not their blobs
        // (unless the cache is exported with them).
        let (layer, members) = if state.exported || self.cache_log.is_some() {
            write_layer_listing_members(self.store, &active.upper, &opts)
                .map_err(|e| e.to_string())?
        } else {
            let (diff_id, tar_len) =
                layer_diff_id(&active.upper, &opts).map_err(|e| e.to_string())?;
            let descriptor = placeholder(&diff_id, tar_len, &opts);
            (
                Layer {
                    descriptor,
                    diff_id,
                },
                None,
            )
        };
        tracing::debug!(
            digest = %layer.descriptor.digest(),
            size = layer.descriptor.size(),
            ms = started.elapsed().as_millis() as u64,
            blob = !is_placeholder(&layer.descriptor),
            "layer written"
        );
        if let (Some(list), Some(cache)) = (members, self.cache)
            && let Ok(blob) = Digest::try_from(layer.descriptor.digest())
        {
            let _ = cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .save_members(&blob, &list);
        }
        let chain = chain_id(state.layers.last().map(|l| &l.chain), &layer.diff_id);
        let dir = self
            .snapshots
            .commit(active, &chain)
            .map_err(|e| e.to_string())?;
        push_layer(state, layer, chain, dir, false);
        Ok(())
    }
}

/// The committed layer of a step's previous build, and the sources (context-relative paths)
/// whose mode and content are the same now.
pub(crate) struct PreviousLayer {
    pub(crate) upper: PathBuf,
    pub(crate) unchanged: std::collections::HashSet<String>,
    /// Its blob, whose gzip members the new layer may take.
    blob: Digest,
}

/// Puts a layer on the stage with the history entry its step left in `created_by`.
fn push_layer(state: &mut StageState, layer: Layer, chain: Digest, dir: PathBuf, pending: bool) {
    state.layers.push(StageLayer {
        layer,
        chain,
        dir,
        pending,
    });
    let text = std::mem::take(&mut state.created_by);
    push_history(state, text, false);
}
