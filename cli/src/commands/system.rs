//! `save`, `load` and `system df|prune|check`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use snapshotter::archive::{ArchiveFormat, load, save};
use snapshotter::check::check;
use snapshotter::gc::{GcLock, collect, dir_size};
use snapshotter::{FsStore, Store};

use crate::args::{CheckArgs, LoadArgs, PruneArgs, SaveArgs};

pub(crate) fn save_cmd(root: &Path, a: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let images = super::image::resolve_many(&store, &a.images)?;
    let format = match a.format.as_str() {
        "docker-archive" => ArchiveFormat::DockerArchive,
        "oci-archive" => ArchiveFormat::OciArchive,
        other => bail!("unknown archive format {other:?} (docker-archive or oci-archive)"),
    };
    match &a.output {
        Some(path) => {
            // Written beside the target and renamed, so a failed save leaves no partial file.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("create a file in {}", dir.display()))?;
            save(
                &store,
                &images,
                format,
                std::io::BufWriter::new(tmp.as_file_mut()),
            )?;
            tmp.as_file().sync_all()?;
            tmp.persist(path)
                .with_context(|| format!("write {}", path.display()))?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal: use -o or redirect");
            }
            let mut out = std::io::stdout().lock();
            save(&store, &images, format, &mut out)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn load_cmd(root: &Path, a: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let _gc = GcLock::shared(root)?;
    let loaded = match &a.input {
        Some(p) => load(
            &store,
            std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?,
        ),
        None => load(&store, std::io::stdin()),
    }
    .context("load")?;
    for r in loaded {
        println!(
            "Loaded image: {}:{}",
            r.familiar_name(),
            r.tag().unwrap_or("latest")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn df(root: &Path) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let images = store.images()?.len();
    let blobs = dir_size(&root.join("blobs"));
    let snapshots = dir_size(&root.join("snapshots"));
    let n_snap = std::fs::read_dir(root.join("snapshots"))
        .map(|d| d.flatten().filter(|e| e.file_name().len() == 64).count())
        .unwrap_or(0);
    let reclaim = {
        let _gc = GcLock::exclusive(root)?;
        collect(&store, &crate::containers::images_in_use(root)?, true)?
    };
    let rows = vec![
        [
            "Images".to_string(),
            images.to_string(),
            super::images::human_size(blobs),
            super::images::human_size(blob_bytes(&store, &reclaim.blobs)),
        ],
        [
            "Snapshots".to_string(),
            n_snap.to_string(),
            super::images::human_size(snapshots),
            format!("{} dirs", reclaim.snapshots.len()),
        ],
    ];
    super::images::print_table(
        &["TYPE", "TOTAL", "SIZE", "RECLAIMABLE"].map(String::from),
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn blob_bytes(store: &FsStore, blobs: &[snapshotter::Digest]) -> u64 {
    blobs
        .iter()
        .filter_map(|d| std::fs::metadata(store.blob_path(d)).ok())
        .map(|m| m.len())
        .sum()
}

pub(crate) fn prune(root: &Path, a: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let _gc = GcLock::exclusive(root)?;
    let c = collect(&store, &crate::containers::images_in_use(root)?, a.dry_run)?;
    let verb = if a.dry_run { "Would delete" } else { "Deleted" };
    for d in &c.blobs {
        println!("{verb} blob: {d}");
    }
    for s in &c.snapshots {
        println!("{verb} snapshot: sha256:{s}");
    }
    println!(
        "Total reclaimed space: {}",
        super::images::human_size(c.bytes)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn check_cmd(root: &Path, a: CheckArgs) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let _gc = GcLock::exclusive(root)?;
    let problems = check(&store, a.repair)?;
    let mut bad = false;
    for p in &problems {
        println!("{}{}", p.what, if p.repaired { " (repaired)" } else { "" });
        bad |= p.corrupt && !p.repaired;
    }
    if !bad {
        println!("store {} is consistent", root.display());
    }
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn layer_create(
    root: &Path,
    a: crate::args::LayerCreateArgs,
) -> anyhow::Result<ExitCode> {
    let store = super::open_store(root)?;
    let _gc = GcLock::shared(root)?;
    let opts = snapshotter::diff::DiffOptions {
        compression: a.compression.parse().map_err(anyhow::Error::msg)?,
        ..snapshotter::diff::DiffOptions::from_env()
    };
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    let layer = snapshotter::diff::write_layer(&store, &a.dir, &opts)?;
    let out = serde_json::json!({
        "mediaType": layer.descriptor.media_type().to_string(),
        "digest": layer.descriptor.digest().to_string(),
        "size": layer.descriptor.size(),
        "diffID": layer.diff_id.to_string(),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
