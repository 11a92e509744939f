//! Image commands: `tag`, `rmi`, `inspect`, `history`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;
use snapshotter::gc::{GcLock, collect};
use snapshotter::image::{StoredImage, read_image};
use snapshotter::{FsStore, Reference, Store};

use crate::args::{HistoryArgs, InspectArgs, RmiArgs, TagArgs};

/// Finds an image by name, full ID or unique ID prefix; returns the names it has.
pub(crate) fn find_image(
    store: &FsStore,
    what: &str,
) -> anyhow::Result<(StoredImage, Vec<Reference>)> {
    let all = store.images()?;
    if let Ok(r) = what.parse::<Reference>()
        && let Some((_, d)) = all.iter().find(|(n, _)| *n == r)
    {
        let img = read_image(store, d)?;
        let names = names_of(&all, d);
        return Ok((img, names));
    }
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut found: Vec<(StoredImage, Vec<Reference>)> = Vec::new();
        for (_, d) in &all {
            let img = read_image(store, d)?;
            if img.id().hex().starts_with(hex) && !found.iter().any(|(f, _)| f.id() == img.id()) {
                let names = names_of(&all, d);
                found.push((img, names));
            }
        }
        match found.len() {
            1 => return Ok(found.remove(0)),
            0 => {}
            _ => bail!("{what}: ambiguous image ID prefix"),
        }
    }
    bail!("no such image: {what}")
}

/// `RepoDigests`: the registry digests recorded on the image's names by pull and push.
fn repo_digests(store: &FsStore, img: &StoredImage) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (_, d) in store.images()? {
        if d.digest() != img.descriptor.digest() {
            continue;
        }
        let Some(rd) = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(builder::registry::REPO_DIGEST_ANNOTATION))
        else {
            continue;
        };
        let shown = match rd
            .split_once('@')
            .and_then(|(n, dg)| Some((n.parse::<Reference>().ok()?, dg)))
        {
            Some((r, dg)) => format!("{}@{dg}", r.familiar_name()),
            None => rd.clone(),
        };
        if !out.contains(&shown) {
            out.push(shown);
        }
    }
    Ok(out)
}

fn names_of(
    all: &[(Reference, oci_spec::image::Descriptor)],
    d: &oci_spec::image::Descriptor,
) -> Vec<Reference> {
    all.iter()
        .filter(|(_, x)| x.digest() == d.digest())
        .map(|(n, _)| n.clone())
        .collect()
}

pub(crate) fn tag(root: &Path, a: TagArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let (img, _) = find_image(&store, &a.source)?;
    let target: Reference = a.target.parse()?;
    store.tag(&target, &img.descriptor)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn rmi(root: &Path, a: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let _gc = GcLock::exclusive(root)?;
    let mut failed = false;
    for what in &a.images {
        let result = (|| -> anyhow::Result<()> {
            let (img, names) = find_image(&store, what)?;
            let by_name = what.parse::<Reference>().ok().filter(|r| names.contains(r));
            let to_untag: Vec<Reference> = match by_name {
                Some(r) => vec![r],
                None if names.len() > 1 && !a.force => {
                    bail!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        img.id().short()
                    )
                }
                None => names.clone(),
            };
            if to_untag.len() == names.len() && !a.force {
                let manifest = img.descriptor.digest().to_string();
                if let Some(c) = crate::containers::Containers::open(root)?
                    .list()?
                    .into_iter()
                    .find(|c| c.config.manifest == manifest)
                {
                    bail!(
                        "conflict: unable to remove repository reference \"{what}\" (must force) - container {} is using its referenced image {}",
                        &c.config.id[..12],
                        img.id().short()
                    );
                }
            }
            for r in &to_untag {
                store.untag(r)?;
                println!(
                    "Untagged: {}:{}",
                    r.familiar_name(),
                    r.tag().unwrap_or("latest")
                );
            }
            if to_untag.len() == names.len() {
                println!("Deleted: {}", img.id());
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("kiln: error: {e:#}");
            failed = true;
        }
    }
    collect(&store, &crate::containers::images_in_use(root)?, false)?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn inspect(root: &Path, a: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let mut out = Vec::new();
    for what in &a.images {
        let (img, names) = find_image(&store, what)?;
        let size: u64 = img.manifest.layers().iter().map(|l| l.size()).sum();
        let c = &img.config;
        out.push(json!({
            "Id": img.id().to_string(),
            "RepoTags": names.iter().map(|n| format!("{}:{}", n.familiar_name(), n.tag().unwrap_or("latest"))).collect::<Vec<_>>(),
            "RepoDigests": repo_digests(&store, &img)?,
            "Parent": "",
            "Comment": c.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
            "Created": c.created,
            "Author": c.author.clone().unwrap_or_default(),
            "Config": c.config,
            "Architecture": c.architecture,
            "Variant": c.variant,
            "Os": c.os,
            "Size": size,
            "RootFS": {"Type": "layers", "Layers": c.rootfs.diff_ids},
            "History": c.history,
            "Descriptor": img.descriptor,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn history(root: &Path, a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let (img, _) = find_image(&store, &a.image)?;
    let mut sizes = img.manifest.layers().iter().map(|l| l.size());
    let mut rows: Vec<[String; 4]> = Vec::new();
    let id = img.id();
    for (i, h) in img.config.history.iter().enumerate() {
        let size = if h.empty_layer == Some(true) {
            0
        } else {
            sizes.next().unwrap_or(0)
        };
        let created = h
            .created
            .clone()
            .map(|c| super::images::ago(&c))
            .unwrap_or_default();
        let mut by = h.created_by.clone().unwrap_or_default();
        if !a.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        let first = if i + 1 == img.config.history.len() {
            id.short().to_string()
        } else {
            "<missing>".to_string()
        };
        rows.push([first, created, by, super::images::human_size(size)]);
    }
    rows.reverse();
    let header = ["IMAGE", "CREATED", "CREATED BY", "SIZE"].map(String::from);
    super::images::print_table(&header, &rows);
    Ok(ExitCode::SUCCESS)
}

/// Reads an image's manifest for `save` and friends.
pub(crate) fn resolve_many(
    store: &FsStore,
    names: &[String],
) -> anyhow::Result<Vec<(Reference, StoredImage)>> {
    names
        .iter()
        .map(|n| {
            let (img, refs) = find_image(store, n)?;
            let r = n
                .parse::<Reference>()
                .ok()
                .filter(|r| refs.contains(r))
                .or_else(|| refs.first().cloned())
                .with_context(|| format!("{n} has no name to save it under"))?;
            Ok((r, img))
        })
        .collect()
}
