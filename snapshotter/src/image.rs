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

/// The media types an image is written with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageFormat {
    /// OCI image manifest, config and layer types.
    #[default]
    Oci,
    /// Docker's schema 2 types (`application/vnd.docker.*`), which Docker-only config fields
    /// (HEALTHCHECK, ONBUILD, SHELL) are defined for.
    Docker,
}

/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

impl ImageFormat {
    fn manifest_type(self) -> MediaType {
        match self {
            ImageFormat::Oci => MediaType::ImageManifest,
            ImageFormat::Docker => MediaType::Other(DOCKER_MANIFEST.into()),
        }
    }

    fn config_type(self) -> MediaType {
        match self {
            ImageFormat::Oci => MediaType::ImageConfig,
            ImageFormat::Docker => MediaType::Other(DOCKER_CONFIG.into()),
        }
    }

    /// The layer media type in this format (Docker's schema 2 has no zstd).
    fn layer_type(self, oci: &MediaType) -> Result<MediaType> {
        if self == ImageFormat::Oci {
            // Layers of a Docker-format base image get their OCI names.
            return Ok(match oci {
                MediaType::Other(o) if o == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                    MediaType::ImageLayerGzip
                }
                MediaType::Other(o) if o == "application/vnd.docker.image.rootfs.diff.tar" => {
                    MediaType::ImageLayer
                }
                other => other.clone(),
            });
        }
        let docker = match oci {
            MediaType::ImageLayerGzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            MediaType::ImageLayer => "application/vnd.docker.image.rootfs.diff.tar",
            MediaType::Other(o) if o.starts_with("application/vnd.docker.") => {
                return Ok(oci.clone());
            }
            other => {
                return Err(StoreError::InvalidLayer(format!(
                    "the Docker image format has no media type for {other} layers (use gzip, or the OCI format)"
                )));
            }
        };
        Ok(MediaType::Other(docker.into()))
    }
}

/// Writes `config` and a manifest over `layers`; returns the stored image.
pub fn write_image(
    store: &dyn Store,
    config: &ImageConfig,
    layers: &[Layer],
) -> Result<StoredImage> {
    write_image_raw(store, &to_json("image config", config)?, layers)
}

/// [`write_image`] in the given format.
pub fn write_image_as(
    store: &dyn Store,
    config: &ImageConfig,
    layers: &[Layer],
    format: ImageFormat,
) -> Result<StoredImage> {
    write_image_bytes(store, &to_json("image config", config)?, layers, format)
}

/// Like [`write_image`], with the config given as its exact bytes (kept as they are, so an
/// image loaded from an archive keeps its ID).
pub fn write_image_raw(
    store: &dyn Store,
    config_bytes: &[u8],
    layers: &[Layer],
) -> Result<StoredImage> {
    write_image_bytes(store, config_bytes, layers, ImageFormat::Oci)
}

fn write_image_bytes(
    store: &dyn Store,
    config_bytes: &[u8],
    layers: &[Layer],
    format: ImageFormat,
) -> Result<StoredImage> {
    let config: ImageConfig = from_json("image config", config_bytes)?;
    let (config_digest, config_size) = store.put_bytes(config_bytes)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(format.manifest_type())
        .config(
            DescriptorBuilder::default()
                .media_type(format.config_type())
                .digest(&config_digest)
                .size(config_size)
                .build()
                .expect("descriptor fields are set"),
        )
        .layers(
            layers
                .iter()
                .map(|l| {
                    let mut d = l.descriptor.clone();
                    d.set_media_type(format.layer_type(d.media_type())?);
                    Ok(d)
                })
                .collect::<Result<Vec<_>>>()?,
        )
        .build()
        .expect("manifest fields are set");
    let manifest_bytes = to_json("image manifest", &manifest)?;
    let (digest, size) = store.put_bytes(&manifest_bytes)?;
    let descriptor = DescriptorBuilder::default()
        .media_type(format.manifest_type())
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
