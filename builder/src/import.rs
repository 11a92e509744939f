//! `kiln import`: a root filesystem tarball becomes a one-layer image, like `docker import`.

use std::io::Read;

use parser::{Instruction, Lexer};
use snapshotter::config::History;
use snapshotter::image::{StoredImage, write_image};
use snapshotter::{ImageConfig, Reference, Store};

use crate::dispatch::{ConfigState, apply_config};
use crate::error::{BuildError, Result};
use crate::platform::{Platform, creation_time};

/// What `kiln import` was asked for besides the tarball.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Dockerfile instructions applied to the config (`--change`).
    pub changes: Vec<String>,
    /// History comment (`--message`); default `Imported from SOURCE`.
    pub message: Option<String>,
    /// Platform recorded in the config; default the host's.
    pub platform: Option<Platform>,
    /// How the source is named in the default message (`-` for stdin).
    pub source: String,
    /// How the layer is compressed in the store.
    pub compression: snapshotter::compress::LayerCompression,
}

/// Parses `--change` lines into config instructions, rejecting anything else.
fn parse_changes(changes: &[String]) -> Result<Vec<Instruction>> {
    changes
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let file = format!("--change #{}", i + 1);
            let node = parser::parse_line(line).map_err(|error| BuildError::Parse {
                file: file.clone(),
                error,
            })?;
            let ins = parser::instruction(&node).map_err(|error| BuildError::Parse {
                file: file.clone(),
                error,
            })?;
            const ALLOWED: &[&str] = &[
                "CMD",
                "ENTRYPOINT",
                "ENV",
                "EXPOSE",
                "LABEL",
                "USER",
                "VOLUME",
                "WORKDIR",
                "STOPSIGNAL",
            ];
            if !ALLOWED.contains(&node.keyword.as_str()) {
                return Err(BuildError::Instruction {
                    at: format!("{file}:{}", node.start),
                    message: format!(
                        "{} is not a valid change command (use one of {})",
                        node.keyword,
                        ALLOWED.join(", ")
                    ),
                });
            }
            Ok(ins)
        })
        .collect()
}

/// Imports a rootfs tarball (plain, gzip or zstd) as image `name`.
///
/// Changes are checked before the input is read, and the name is only set once every blob is
/// stored, so a failure leaves the store's images as they were.
pub fn import(
    store: &dyn Store,
    input: impl Read + Send,
    name: &Reference,
    opts: &ImportOptions,
) -> Result<StoredImage> {
    let changes = parse_changes(&opts.changes)?;
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let created = creation_time().map_err(BuildError::Other)?;

    let mut state = ConfigState {
        image: ImageConfig {
            created: Some(created.clone()),
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let lexer = Lexer::default();
    for (i, ins) in changes.iter().enumerate() {
        apply_config(&mut state, ins, &lexer).map_err(|message| BuildError::Instruction {
            at: format!("--change #{}", i + 1),
            message,
        })?;
    }

    let layer = snapshotter::layer::import_tar_as(store, input, opts.compression)
        .map_err(|e| BuildError::Other(format!("import {}: {e}", opts.source)))?;
    let mut image = state.image;
    image.rootfs.diff_ids = vec![layer.diff_id.to_string()];
    image.history = vec![History {
        created: Some(created),
        comment: Some(
            opts.message
                .clone()
                .unwrap_or_else(|| format!("Imported from {}", opts.source)),
        ),
        ..Default::default()
    }];
    let stored = write_image(store, &image, &[layer])?;
    store.tag(name, &stored.descriptor)?;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshotter::MemStore;

    fn tarball() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "bin/sh", &b"#!"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn import_applies_changes_and_tags() {
        let store = MemStore::new();
        let name: Reference = "base:1".parse().unwrap();
        let opts = ImportOptions {
            changes: vec![
                "ENV PATH=/bin".into(),
                "CMD [\"sh\"]".into(),
                "EXPOSE 80".into(),
            ],
            source: "-".into(),
            ..Default::default()
        };
        let img = import(&store, &tarball()[..], &name, &opts).unwrap();
        assert_eq!(img.config.config.env.as_deref().unwrap(), ["PATH=/bin"]);
        assert_eq!(img.config.config.cmd.as_deref().unwrap(), ["sh"]);
        assert_eq!(
            img.config.history[0].comment.as_deref(),
            Some("Imported from -")
        );
        assert_eq!(store.resolve(&name).unwrap().unwrap(), img.descriptor);
    }

    #[test]
    fn bad_change_is_rejected_before_anything_is_stored() {
        let store = MemStore::new();
        let name: Reference = "base".parse().unwrap();
        for (change, want) in [
            ("RUN echo", "RUN is not a valid change command"),
            ("BOGUS x", "--change #1:1:1: unknown instruction \"BOGUS\""),
            ("ENV A", "ENV must have two arguments"),
        ] {
            let opts = ImportOptions {
                changes: vec![change.into()],
                source: "-".into(),
                ..Default::default()
            };
            let e = import(&store, &tarball()[..], &name, &opts)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{change}: {e}");
        }
        assert!(store.images().unwrap().is_empty());
    }
}
