//! Reading and writing images: config and manifest blobs in the store.

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageManifest, ImageManifestBuilder, MediaType,
};

use crate::config::ImageConfig;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::layer::Layer;
use crate::store::Store;

/// An image as stored: its manifest and config, and the manifest's descriptor.
#[derive(Clone, Debug)]
pub struct StoredImage {
    /// Descriptor of the manifest blob.
    pub descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config.
    pub config: ImageConfig,
}

impl StoredImage {
    /// The image ID, as Docker defines it: the digest of the config blob.
    pub fn id(&self) -> Digest {
        Digest::try_from(self.manifest.config().digest()).expect("manifest was verified on read")
    }
}

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| StoreError::Json {
        what: what.to_string(),
        source,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|source| StoreError::Json {
        what: what.to_string(),
        source,
    })
}

/// Writes `config` and a manifest over `layers`; returns the stored image.
pub fn write_image(
    store: &dyn Store,
    config: &ImageConfig,
    layers: &[Layer],
) -> Result<StoredImage> {
    write_image_raw(store, &to_json("image config", config)?, layers)
}

/// Like [`write_image`], with the config given as its exact bytes (kept as they are, so an
/// image loaded from an archive keeps its ID).
pub fn write_image_raw(
    store: &dyn Store,
    config_bytes: &[u8],
    layers: &[Layer],
) -> Result<StoredImage> {
    let config: ImageConfig = from_json("image config", config_bytes)?;
    let (config_digest, config_size) = store.put_bytes(config_bytes)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(&config_digest)
                .size(config_size)
                .build()
                .expect("descriptor fields are set"),
        )
        .layers(
            layers
                .iter()
                .map(|l| l.descriptor.clone())
                .collect::<Vec<_>>(),
        )
        .build()
        .expect("manifest fields are set");
    let manifest_bytes = to_json("image manifest", &manifest)?;
    let (digest, size) = store.put_bytes(&manifest_bytes)?;
    let descriptor = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(&digest)
        .size(size)
        .build()
        .expect("descriptor fields are set");
    Ok(StoredImage {
        descriptor,
        manifest,
        config,
    })
}

/// Reads and verifies the manifest and config a descriptor points at.
pub fn read_image(store: &dyn Store, descriptor: &Descriptor) -> Result<StoredImage> {
    let digest = Digest::try_from(descriptor.digest())?;
    let manifest: ImageManifest = from_json("image manifest", &store.read_verified(&digest)?)?;
    let config_digest = Digest::try_from(manifest.config().digest())?;
    let config: ImageConfig = from_json("image config", &store.read_verified(&config_digest)?)?;
    Ok(StoredImage {
        descriptor: descriptor.clone(),
        manifest,
        config,
    })
}
