//! kiln's content-addressed storage: blobs, named images, and OCI layers.
//!
//! # Brief overview
//!
//! - [`Digest`]: a `sha256:` content digest, with [`HashingReader`]/[`HashingWriter`] that
//!   compute one while data streams through.
//! - [`Reference`]: an image name normalized as Docker does (`busybox` is
//!   `docker.io/library/busybox:latest`).
//! - [`Store`]: the seam for blobs and image names. [`FsStore`] is an OCI image layout on disk
//!   that skopeo and umoci read directly, with atomic blob writes and a locked `index.json`;
//!   [`MemStore`] is the in-memory test double.
//! - [`layer`]: compression detection and [`layer::import_tar`], which turns a tar stream into
//!   a verified layer blob in one pass.
//! - [`ImageConfig`]: the image configuration with stable serialization.
//! - [`snapshot`]: layers unpacked once per chain ID in overlay form ([`snapshot::Snapshots`]),
//!   writable [`snapshot::Active`] snapshots, and [`diff::write_layer`], which turns an upper
//!   directory into a deterministic layer.
//! - [`members`]: the gzip members of COPY layers, listed so the next build of the same COPY
//!   takes the unchanged ones instead of compressing them again.
//! - [`gc`]: what names keep alive, and collecting the rest; [`check`]: store fsck;
//!   [`archive`]: `docker-archive` and `oci-archive` save and load.
//! - [`image`]: writing and reading image manifests and configs.
//!
//! ```
//! use snapshotter::{MemStore, Store, Digest};
//! let store = MemStore::new();
//! let (digest, size) = store.put_bytes(b"hello").unwrap();
//! assert_eq!((digest, size), (Digest::of(b"hello"), 5));
//! ```

pub mod archive;
pub mod check;
pub mod compress;
pub mod config;
pub mod copyfs;
pub mod diff;
pub mod digest;
pub mod error;
pub mod gc;
mod gzip_member;
mod hash_lanes;
pub mod image;
pub mod layer;
pub mod members;
mod parallel_gzip;
mod placement;
pub mod reference;
mod sha256_lanes;
pub mod snapshot;
pub mod store;
#[cfg(test)]
mod test_bytes;
mod writeback;

pub use config::{ImageConfig, RunConfig};
pub use digest::{Digest, HashingReader, HashingWriter};
pub use error::{Result, StoreError};
pub use reference::Reference;
pub use store::{BlobWriter, FsStore, MemStore, Store};
